"""Faults: is an annotation once answered 200 still in the store after a crash (issue 38)?

clinie answers a webhook 200 only once the annotation is committed; Label Studio does not send an
acknowledged event again, so one lost after a 200 is lost for good (unless re-sync is configured).
Each round starts a real ``clinie serve`` (gunicorn, as deployed, on loopback) on a fresh data
directory with nothing but the store at work (no training, no model), floods it with
``ANNOTATION_CREATED`` events (``harness.helpers.webhook_event``) from ``--senders``
concurrent senders, one new connection per event as Label Studio does, injects a fault, SIGKILLs
it, starts it again on the same directory (no limit) and stops it cleanly; then the store file is
read directly, with no backend beside the reader (a reader beside a live backend is itself one of
the faults measured). The round kinds:

- ``full-disk``: the backend runs under a file-size limit (``RLIMIT_FSIZE``, 3 MB; SQLite then
  fails as on a full disk), 60 events of about 100 KB of note text each. On PostgreSQL the disk is
  a real one: the round's own cluster on a filesystem of its own left a few MB free (see
  ``full_postgres_disk``), 100 events of 100 KB of letters PostgreSQL cannot compress;
- ``sigkill``: 300 small events, SIGKILL once a number of them drawn from the seed were
  acknowledged;
- ``second-process``: projects 2 and 3 get a few annotations, then events for project 1 flow
  while ``clinie purge --project 2`` and ``clinie report --project 3`` run as processes of their
  own on the same data directory (project 3 holds one annotation: the report opens the store,
  reads it and exits 2, as a report needs two, rather than train encoders for minutes); 50 more
  events once both have ended, then SIGKILL. Project 2's annotations must not come back.

Recorded per round: events sent, their answers, acknowledged (200), found after the restart,
**lost** (acknowledged, not found: must be 0), ``PRAGMA integrity_check`` (PostgreSQL: amcheck;
must be ``ok``), the moment of the kill, for ``second-process`` the exit codes of purge and report
and the purged annotations found again (must be 0), and for ``full-disk`` that the disk did fill
(some event answered otherwise than 200). Then one hostile-input round: ``--hostile`` malformed
requests (``harness.hostile``) to a live backend; none may be answered 5xx or go unanswered.
The bench exits 1 when any of these fails.

    python -m bench.faults                               # 10 rounds of each kind, 1000 hostile inputs, seed 0
    python -m bench.faults --rounds 1 --kinds sigkill --hostile 0 --out /tmp/faults
    python -m bench.faults --rounds 3 --hostile 0 --code 6db28a2   # the code of a revision before a fix

Deterministic given ``--seed`` (the notes, the kill moments, the hostile inputs); what the
machine's timing makes of them is not. Writes ``bench/results/faults/loopback.json`` (kept in git;
a run replaces the one of the same seed, rounds, kinds and hostile inputs, each with the command
that made it); ``python -m bench.results_doc`` puts it into docs/results.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import requests

from bench import command_line, revision_env
from harness import ROOT
from harness.backend_server import BackendServer
from harness.helpers import webhook_event
from harness.hostile import send_hostile
from harness.postgres_server import PostgresServer

OUT = ROOT / "bench" / "results" / "faults"
#: Nothing but the store: no training, no model loaded, no selection.
ENV = {"CLINIE_TRAIN_EVERY": "0", "CLINIE_STRATEGY": "encoder", "CLINIE_SELECT_STRATEGIES": "",
       "CLINIE_LOG_LEVEL": "WARNING"}
#: How a full disk looks to SQLite: a write past this many bytes of any file fails (EFBIG).
FILE_SIZE_LIMIT = 3_000_000
#: PostgreSQL's full disk: its filesystem's size before the round shrinks it, and once the operator freed space.
DISK_MB = 128
#: Project 2's and 3's annotation ids start here (project 1's at 1), so that none collide.
PROJECT_IDS = {2: 200_001, 3: 300_001}
NOTE = "Patient admitted with fever, productive cough and pleuritic chest pain; chest X-ray shows a right lower " \
       "lobe consolidation. "


def note(i: int, chars: int) -> str:
    """A clinical-looking note of about ``chars`` characters, different for every event.

    >>> len(note(7, 1000)) >= 1000, note(7, 10).startswith("note 7:")
    (True, True)
    """
    head = f"note {i}: "
    return head + NOTE * (1 + max(0, chars - len(head)) // len(NOTE))


class Flood:
    """Events sent from ``senders`` threads at once, in the background, so that the caller can kill
    the server or run another process while it lasts. ``events`` may be endless: ``stop`` ends it."""

    def __init__(self, url: str, events: Iterable[dict], senders: int) -> None:
        self._url = url + "/webhook"
        self._events = iter(events)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.sent: list[int] = []
        self.acknowledged: list[int] = []
        self.answers: Counter[str] = Counter()
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                event = next(self._events, None)
                if event is None:
                    return
                self.sent.append(event["annotation"]["id"])
            try:
                answer = str(requests.post(self._url, json=event, timeout=60).status_code)
            except requests.RequestException:  # sent while the process died: Label Studio would log it
                answer = "none"
            with self._lock:
                self.answers[answer] += 1
                if answer == "200":
                    self.acknowledged.append(event["annotation"]["id"])

    def wait_for(self, acknowledged: int, timeout: float = 300) -> None:
        """Until ``acknowledged`` events were answered 200, every event was answered, or ``timeout``
        seconds passed (a backend that answers nothing but errors must not hang the bench)."""
        deadline = time.monotonic() + timeout
        while (len(self.acknowledged) < acknowledged and any(t.is_alive() for t in self._threads)
               and time.monotonic() < deadline):
            time.sleep(0.005)

    def join(self) -> Flood:
        for thread in self._threads:
            thread.join()
        return self

    def stop(self) -> Flood:
        """No new event; those in flight get their answers."""
        self._stopped.set()
        return self.join()


def noise(rng: random.Random, chars: int) -> str:
    """Letters and spaces at random: a note that PostgreSQL cannot compress (it compresses long
    values, ``note``'s repetitions to almost nothing), so that 100 KB of it take 100 KB of disk.

    >>> len(noise(random.Random(0), 50)), set(noise(random.Random(0), 500)) <= set(string.ascii_lowercase + " ")
    (50, True)
    """
    return "".join(rng.choices(string.ascii_lowercase + " ", k=chars))


def events(project: int, texts: Iterable[str]) -> Iterator[dict]:
    """One new annotation per text, ids from the project's range."""
    first = PROJECT_IDS.get(project, 1)
    for i, text in enumerate(texts):
        yield webhook_event(first + i, first + i, text, [], project=project)


#: The PostgreSQL cluster the stores are in (``--database postgresql``); None: SQLite files.
POSTGRES: PostgresServer | None = None


def settings(data_dir: Path) -> dict[str, str]:
    """The backend's settings for a round's data directory: its store there (SQLite), or in a
    database of its own, named for the directory (PostgreSQL: made at the round's first call)."""
    if POSTGRES is None:
        return ENV
    name = f"faults_{data_dir.name}".replace("-", "_")
    if not (data_dir / "database").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "database").write_text(POSTGRES.database(name))
    return {**ENV, "CLINIE_DATABASE_URL": (data_dir / "database").read_text()}


def restart_and_read(data_dir: Path) -> dict:
    """Start the backend again on ``data_dir`` (what a user does after a crash; the store recovers
    its write-ahead log), stop it cleanly, then read the store alone: the annotations found, per
    id their project, and ``PRAGMA integrity_check`` (SQLite; PostgreSQL checks its pages as it
    reads them as far as a query does: ``amcheck`` checks every page of the store's tables, their
    TOAST included, and its B-tree indexes against the rows, "ok" when it found nothing)."""
    try:
        with BackendServer(data_dir, **settings(data_dir)):
            restarted = "yes"
    except (RuntimeError, TimeoutError) as error:  # the store may be past starting on
        restarted = f"failed: {str(error).splitlines()[0]}"
    if POSTGRES is not None:
        import psycopg

        with psycopg.connect(settings(data_dir)["CLINIE_DATABASE_URL"]) as db:
            found = dict(db.execute("SELECT annotation_id, CAST(project AS INTEGER) FROM annotations").fetchall())
            db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            mine = "c.relnamespace = 'public'::regnamespace"
            problems = [row[0] for row in db.execute(
                f"SELECT c.relname || ' block ' || v.blkno || ': ' || v.msg FROM pg_class c, "
                f"verify_heapam(c.oid, check_toast => true) v WHERE c.relkind = 'r' AND {mine}")]
            try:  # raises on the first index that misses a row or is out of order
                db.execute(f"SELECT bt_index_check(c.oid, true) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                           f"WHERE c.relkind = 'i' AND a.amname = 'btree' AND {mine}")
            except psycopg.Error as error:
                problems.append(str(error))
        integrity = "; ".join(problems)[:300] or "ok"
        return {"restarted": restarted, "integrity": integrity, "found": found}
    with closing(sqlite3.connect(data_dir / "clinie.sqlite3")) as db:
        try:
            integrity = "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))[:300]
            found = dict(db.execute("SELECT annotation_id, CAST(project AS INTEGER) FROM annotations"))
        except sqlite3.DatabaseError as error:
            integrity, found = f"unreadable: {error}", {}
    return {"restarted": restarted, "integrity": integrity, "found": found}


def outcome(kind: str, floods: list[Flood], store: dict, started: float, **fault: object) -> dict:
    """A round's record: of the events that must be kept, what was sent, answered and found."""
    sent = [i for f in floods for i in f.sent]
    acknowledged = {i for f in floods for i in f.acknowledged}
    answers = sum((f.answers for f in floods), Counter())
    return {"kind": kind, **fault, "sent": len(sent), "answers": dict(sorted(answers.items())),
            "acknowledged": len(acknowledged), "found": sum(i in store["found"] for i in sent),
            "lost": len(acknowledged - store["found"].keys()), "restarted": store["restarted"],
            "integrity": store["integrity"], "seconds": round(time.monotonic() - started, 1)}


def full_disk(data_dir: Path, rng: random.Random, senders: int) -> dict:
    """Killed once every event was answered: those answered 500 are the disk's, those answered 200
    must survive. The restart is without the limit, as once the disk has room again."""
    if POSTGRES is not None:
        return full_postgres_disk(data_dir, rng, senders)
    started = time.monotonic()
    with BackendServer(data_dir, file_size_limit=FILE_SIZE_LIMIT, **settings(data_dir)) as server:
        flood = Flood(server.url, events(1, (note(i, rng.randint(90_000, 110_000)) for i in range(60))),
                      senders).join()
        server.kill()
    return outcome("full-disk", [flood], restart_and_read(data_dir), started, file_size_limit=FILE_SIZE_LIMIT)


def full_postgres_disk(data_dir: Path, rng: random.Random, senders: int) -> dict:
    """A file-size limit on the backend does not reach the database server's files: here the
    round's own cluster has its data directory on a filesystem of its own (a tmpfs,
    ``PostgresServer(disk_mb=)``) shrunk to leave ``disk_free_mb`` MB free once the store's database
    exists. Where it fills first decides what PostgreSQL does: a table, ERROR on extending its
    file, the transaction rolled back, the server running; the WAL, PANIC and a restart, whose
    recovery may fail on the full disk (FATAL, or ERROR on a checkpoint's write cut short, then
    FATAL): the server stops. Drawn: whether the WAL has spare files (``spare_wal``: about 20 MB of
    WAL written and recycled by a checkpoint first); with, a table fills the disk first; without,
    either may (a race). Then the operator frees space (the filesystem back to ``DISK_MB``) and
    starts the server if it stopped; the backend is killed, restarted and read as in every round.
    Recorded besides: what PostgreSQL logged of the full disk (lines per level: ENOSPC, or a write
    cut short) and whether it had stopped."""
    import psycopg

    started = time.monotonic()
    free_mb, spare_wal = rng.randint(4, 10), rng.random() < 0.5
    texts = (f"note {i}: {noise(rng, rng.randint(90_000, 110_000))}" for i in range(100))
    with PostgresServer(disk_mb=DISK_MB) as cluster:
        data_dir.mkdir(parents=True)
        (data_dir / "database").write_text(cluster.database(f"faults_{data_dir.name}".replace("-", "_")))
        if spare_wal:
            with psycopg.connect(cluster.url, autocommit=True) as db:
                db.execute("CREATE TABLE spare AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g")
                db.execute("DROP TABLE spare")
                db.execute("CHECKPOINT")
        cluster.resize(math.ceil(shutil.disk_usage(cluster.data_dir).used / 2**20) + free_mb)
        with BackendServer(data_dir, **settings(data_dir)) as server:
            flood = Flood(server.url, events(1, texts), senders).join()
            server.kill()
        cluster.resize(DISK_MB)
        stopped = cluster.ensure_running()
        log = cluster.log_path.read_text(errors="replace")
        said = Counter(re.findall(r"\] (\w+):  .*(?:No space left on device|wrote only \d+ of \d+ bytes)", log))
        store = restart_and_read(data_dir)
    return outcome("full-disk", [flood], store, started, disk_free_mb=free_mb, spare_wal=spare_wal,
                   postgres_said=dict(sorted(said.items())), postgres_stopped=stopped)


def sigkill(data_dir: Path, rng: random.Random, senders: int) -> dict:
    """Killed after a number of acknowledgements, not after a delay: the seed then says where in the
    flood the kill lands, however fast the machine."""
    started = time.monotonic()
    kill_after = rng.randint(20, 280)
    with BackendServer(data_dir, **settings(data_dir)) as server:
        flood = Flood(server.url, events(1, (note(i, rng.randint(50, 2000)) for i in range(300))), senders)
        flood.wait_for(kill_after)
        server.kill()
        flood.join()
    return outcome("sigkill", [flood], restart_and_read(data_dir), started, kill_after=kill_after)


def second_process(data_dir: Path, rng: random.Random, senders: int) -> dict:
    """Project 1's events flow until purge and report have both ended, so that the second
    processes open and close the store while the backend writes; the 50 events after them are
    those a backend that lost its locks writes where no one will read them again."""
    started = time.monotonic()
    start_after = rng.randint(10, 100)
    project_1 = events(1, (note(i, rng.randint(50, 2000)) for i in itertools.count()))
    cli = [sys.executable, "-m", "clinie.cli"]
    env = {**os.environ, **settings(data_dir)}
    with BackendServer(data_dir, **settings(data_dir)) as server:
        doomed = Flood(server.url, events(2, (note(i, 500) for i in range(20))), senders).join()
        kept = [Flood(server.url, events(3, [note(0, 500)]), 1).join(), Flood(server.url, project_1, senders)]
        kept[-1].wait_for(start_after)
        with open(data_dir / "second-process.log", "wb") as log:
            purge = subprocess.Popen([*cli, "purge", "--project", "2", "--data-dir", str(data_dir)], env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
            report = subprocess.Popen([*cli, "report", "--project", "3", "--data-dir", str(data_dir),
                                       "--out", str(data_dir / "report"), "--repeats", "0"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
            codes = {"purge_exit": purge.wait(), "report_exit": report.wait()}
        kept[-1].stop()
        kept.append(Flood(server.url, itertools.islice(project_1, 50), senders).join())
        server.kill()
    store = restart_and_read(data_dir)
    purged = set(doomed.acknowledged)
    return outcome("second-process", kept, store, started, start_after=start_after, **codes,
                   purged=len(purged), purged_back=len(purged & store["found"].keys()))


KINDS: dict[str, Callable[[Path, random.Random, int], dict]] = {
    "full-disk": full_disk, "sigkill": sigkill, "second-process": second_process}


def hostile(data_dir: Path, seed: int, n: int) -> dict:
    """``n`` hostile requests (``harness.hostile``, those the fuzz tests draw) to a live
    backend, one at a time: none may be answered 5xx or go unanswered. Counted per answer, with the
    first few failures, so that the table says what the backend made of them."""
    with BackendServer(data_dir, **settings(data_dir)) as server:
        tally = send_hostile(server.url, seed, n)
    server_errors = sum(k for answer, k in tally.answers.items() if answer.startswith("5"))
    # "unanswered": no answer, or one that is not JSON
    return {"inputs": tally.tried, "answers": tally.answers, "5xx": server_errors,
            "unanswered": tally.failed - server_errors, "failures": list(tally.failures)}


def totals(rounds: list[dict]) -> dict[str, dict[str, int]]:
    """Per kind: rounds, and the sums of the counts.

    >>> totals([{"kind": "sigkill", "sent": 300, "acknowledged": 120, "found": 125, "lost": 0},
    ...         {"kind": "sigkill", "sent": 300, "acknowledged": 200, "found": 190, "lost": 10}])
    {'sigkill': {'rounds': 2, 'sent': 600, 'acknowledged': 320, 'found': 315, 'lost': 10}}
    """
    out: dict[str, dict[str, int]] = {}
    for r in rounds:
        kind = out.setdefault(r["kind"], {"rounds": 0})
        kind["rounds"] += 1
        for key in ("sent", "acknowledged", "found", "lost", "purged", "purged_back"):
            if key in r:
                kind[key] = kind.get(key, 0) + r[key]
    return out


def failures(rounds: list[dict], hostile_round: dict | None) -> list[str]:
    """What the bench exits 1 for, in words; none when the promise held.

    >>> print(*failures([{"kind": "sigkill", "lost": 0, "integrity": "ok", "restarted": "yes"},
    ...                  {"kind": "second-process", "lost": 3, "purged_back": 2, "integrity": "row 1 missing",
    ...                   "restarted": "yes"}], {"5xx": 1, "unanswered": 0}), sep="\\n")
    round 2 (second-process): 3 acknowledged events lost
    round 2 (second-process): 2 purged annotations came back
    round 2 (second-process): integrity_check: row 1 missing
    hostile inputs: 1 answered 5xx
    """
    out = []
    for n, r in enumerate(rounds, 1):
        where = f"round {n} ({r['kind']})"
        if r["lost"]:
            out.append(f"{where}: {r['lost']} acknowledged events lost")
        if r.get("purged_back"):
            out.append(f"{where}: {r['purged_back']} purged annotations came back")
        if r["integrity"] != "ok":
            out.append(f"{where}: integrity_check: {r['integrity']}")
        if r["restarted"] != "yes":
            out.append(f"{where}: restart {r['restarted']}")
        if r["kind"] == "full-disk" and set(r["answers"]) == {"200"}:
            out.append(f"{where}: the disk never filled (every event answered 200)")
    if hostile_round and hostile_round["5xx"]:
        out.append(f"hostile inputs: {hostile_round['5xx']} answered 5xx")
    if hostile_round and hostile_round["unanswered"]:
        out.append(f"hostile inputs: {hostile_round['unanswered']} unanswered")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders")
    parser.add_argument("--hostile", type=int, default=1000, help="hostile inputs (0: no hostile round)")
    parser.add_argument("--code", metavar="REV", help="run the backend and the command line of git revision REV "
                                                         "(default: this checkout)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the store: a SQLite file (default) or a database in a throwaway PostgreSQL cluster")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    out = args.out / "loopback.json"
    command = command_line("bench.faults")

    load_before = os.getloadavg()
    rounds: list[dict] = []
    hostile_round = None
    global POSTGRES
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as cluster:
        if args.database == "postgresql":
            POSTGRES = cluster.enter_context(PostgresServer())
        if args.code:  # every process the bench starts imports that revision's clinie first
            ENV.update(revision_env(args.code, Path(tmp) / "code"))
        for r in range(args.rounds):
            for kind in kinds:
                rng = random.Random(f"{args.seed}-{kind}-{r}")
                rounds.append(KINDS[kind](Path(tmp) / f"{kind}-{r}", rng, args.senders))
                print(f"round {len(rounds)}: {json.dumps(rounds[-1])}", flush=True)
        if args.hostile:
            hostile_round = hostile(Path(tmp) / "hostile", args.seed, args.hostile)
            print(f"hostile: {json.dumps(hostile_round)}", flush=True)

    failed = failures(rounds, hostile_round)
    run = {"seed": args.seed, "rounds": args.rounds, "kinds": kinds, "database": args.database, "code": args.code,
           "senders": args.senders, "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
           "results": rounds, "totals": totals(rounds), "hostile": hostile_round, "failures": failed,
           "command": command}
    kept = json.loads(out.read_text())["runs"] if out.exists() else []
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": sorted([r for r in kept if key(r) != key(run)] + [run], key=key)},
                              indent=2) + "\n")
    print(json.dumps(run["totals"], indent=1))
    print(f"\nwritten: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if failed:
        sys.exit("the promise did not hold:\n" + "\n".join(failed))


def key(run: dict) -> tuple[str, str, int, int, list[str], int]:
    """What a run measured: a later run of the same replaces it."""
    return run.get("database", "sqlite"), run.get("code") or "", run["seed"], run["rounds"], run["kinds"], \
        run["hostile"]["inputs"] if run["hostile"] else 0


if __name__ == "__main__":
    main()
