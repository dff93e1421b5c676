"""``leadscout campaign launch`` (SPEC 8): a CSV of contacts fanned out through SPEC 4.3's API.

The CSV is read twice, row by row, never whole: once to check its shape, count its rows and
hash its bytes (so a bad file sends nothing), then to send it in chunks of ``batch_size``.
Each chunk's ``Idempotency-Key`` names the campaign, the chunk's index and a hash of its body,
so running an interrupted launch again replays the chunks already accepted (the API answers
their batchIds again) and sends the rest.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import quote, urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schemas.api import CAMPAIGN_ID_PATTERN

MAX_BATCH_ITEMS = 10_000  # SPEC 4.3's limit per call
CONTACT_COLUMN = "contactId"
PARAMETER_COLUMN = re.compile(r"p([1-9][0-9]*)")
POLL_INTERVAL_S = 0.5
POLLS_PER_ROUND = 8  # batch status reads per poll: a million rows are 100 batches
STATS_WAIT_S = 60.0
SHOWN_INVALID_ROWS = 20
# 503 and a lost connection mean nothing was accepted, or the same key answers it again.
RETRYABLE_STATUSES = frozenset({502, 503, 504})
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0)
REQUEST_TIMEOUT_S = 300.0  # a 10,000-item call answers once every item is a durable command


class UsageError(Exception):
    """Bad options or a bad file: nothing was sent."""


class CsvFormatError(UsageError):
    """The file is not a contacts CSV."""


class LaunchError(Exception):
    """The API refused the launch, or could not be reached."""


# ---- reading the CSV ------------------------------------------------------------------------


class Row(NamedTuple):
    line: int  # 1-based line of the file where the row starts
    contact_id: str
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class Header:
    width: int
    parameter_columns: tuple[int, ...]  # column of p1, p2, ... in that order


def parse_header(fields: Sequence[str]) -> Header:
    """``contactId`` first, then exactly p1..pN in any order."""
    names = [name.strip() for name in fields]
    if not names or names[0] != CONTACT_COLUMN:
        raise CsvFormatError(_header_problem(names, f"the first column must be {CONTACT_COLUMN}"))
    column_of = {_parameter_number(name): column for column, name in enumerate(names[1:], 1)}
    numbers = range(1, len(names))
    if len(column_of) != len(numbers) or any(n not in column_of for n in numbers):
        raise CsvFormatError(_header_problem(names, "the other columns must be p1, p2, ... pN"))
    return Header(width=len(names), parameter_columns=tuple(column_of[n] for n in numbers))


def _parameter_number(name: str) -> int | None:
    match = PARAMETER_COLUMN.fullmatch(name)
    return int(match.group(1)) if match else None


def _header_problem(names: Sequence[str], problem: str) -> str:
    return f"line 1: bad header ({','.join(names) or 'empty'}): {problem}"


def read_rows(lines: Iterable[str]) -> Iterator[Row]:
    """The data rows, one at a time; blank lines are skipped, ragged rows are an error."""
    reader = csv.reader(lines)
    try:
        header = parse_header(next(reader, []))
        previous_line = reader.line_num
        for fields in reader:
            start, previous_line = previous_line + 1, reader.line_num
            if fields:
                yield _row(header, start, fields)
    except csv.Error as exc:
        raise CsvFormatError(f"line {reader.line_num}: {exc}") from None


def _row(header: Header, line: int, fields: list[str]) -> Row:
    if len(fields) != header.width:
        raise CsvFormatError(f"line {line}: {len(fields)} fields, the header has {header.width}")
    parameters = tuple(fields[column] for column in header.parameter_columns)
    return Row(line, fields[0], parameters)


def text_lines(fp: BinaryIO, digest: Any = None) -> Iterator[str]:
    """The file's lines as text (UTF-8, a leading BOM dropped), feeding ``digest`` its bytes."""
    for number, raw in enumerate(fp, start=1):
        if digest is not None:
            digest.update(raw)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CsvFormatError(f"line {number}: not UTF-8") from None
        yield line.removeprefix("\ufeff") if number == 1 else line


@dataclass(frozen=True)
class Chunk:
    index: int
    rows: list[Row]


def chunks(rows: Iterable[Row], size: int) -> Iterator[Chunk]:
    """Consecutive chunks of at most ``size`` rows, each yielded as soon as it is full."""
    batch: list[Row] = []
    index = 0
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield Chunk(index, batch)
            batch, index = [], index + 1
    if batch:
        yield Chunk(index, batch)


@dataclass(frozen=True)
class Survey:
    rows: int
    digest: str  # SHA-256 of the file's bytes


def survey(path: Path) -> Survey:
    """Checks every row's shape and counts them, hashing the file on the way."""
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        rows = sum(1 for _ in read_rows(text_lines(fp, digest)))
    return Survey(rows, digest.hexdigest())


# ---- what is sent ----------------------------------------------------------------------------


def derived_campaign_id(file_name: str, digest: str) -> str:
    """``<file stem>-<16 hex of the file's SHA-256>``: the same file is the same campaign."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(file_name).stem).strip("-.")[:64]
    return f"{stem or 'campaign'}-{digest[:16]}"


def is_campaign_id(value: str) -> bool:
    return re.fullmatch(CAMPAIGN_ID_PATTERN, value) is not None


@dataclass(frozen=True)
class Plan:
    """What every chunk of one launch shares."""

    campaign_id: str
    template_id: str
    channel_id: str | None = None


def batch_body(plan: Plan, chunk: Chunk) -> bytes:
    """SPEC 4.3's body as canonical JSON bytes: the same chunk always gives the same bytes."""
    template = {"templateId": plan.template_id}
    defaults: dict[str, Any] = {"template": template}
    if plan.channel_id is not None:
        defaults["providerChannelId"] = plan.channel_id
    body = {"campaignId": plan.campaign_id, "defaults": defaults, "items": _items(template, chunk)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _items(template: dict[str, str], chunk: Chunk) -> list[dict[str, Any]]:
    # Parameters go with their row, and so does the whole template object: a body that does
    # not depend on how the API deep-merges a partial template.
    return [
        {"contactId": row.contact_id, "template": {**template, "parameters": list(row.parameters)}}
        if row.parameters
        else {"contactId": row.contact_id}
        for row in chunk.rows
    ]


def idempotency_key(campaign_id: str, chunk_index: int, body: bytes) -> str:
    """At most 176 characters (SPEC 4.2 allows 255); another body is another key."""
    return f"launch:{campaign_id}:{chunk_index}:{hashlib.sha256(body).hexdigest()[:32]}"


# ---- the API ---------------------------------------------------------------------------------


class BatchApi:
    """The calls a launch makes, on one keep-alive connection.

    The standard library's http.client: the CLI is installed without the test extras, and
    httpx is one of those.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        workspace_id: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        retry_delays: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--api-url {api_url!r}: not an http(s) URL")
        self._url = api_url
        self._parts = parts
        self._base = f"{parts.path.rstrip('/')}/v1/workspaces/{workspace_id}/leadscout"
        self._api_key = api_key
        self._sleep = sleep
        self._retry_delays = retry_delays
        self._connection: http.client.HTTPConnection | None = None

    def send(self, body: bytes, key: str) -> dict[str, Any]:
        """POSTs a batch; its 202 body ``{"batchId", "accepted", "invalid"}``."""
        return self._call("POST", "/outbound/batch", body, {"Idempotency-Key": key})

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._call("GET", f"/batches/{quote(batch_id)}")

    def stats(self, campaign_id: str) -> dict[str, Any]:
        return self._call("GET", f"/campaigns/{quote(campaign_id)}/stats")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Retries a lost connection or a 503 with the same request, so the same key."""
        for delay in (*self._retry_delays, None):
            try:
                status, answer = self._exchange(method, path, body, headers or {})
            except (OSError, http.client.HTTPException) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if status not in RETRYABLE_STATUSES:
                    return _accepted(method, path, status, answer)
                failure = _described(status, answer)
            if delay is None:
                attempts = len(self._retry_delays) + 1
                raise LaunchError(f"{method} {path}: {failure} ({attempts} attempts; {self._url})")
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _exchange(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        connection = self._connect()
        try:
            connection.request(
                method,
                self._base + path,
                body=body,
                headers={"X-API-Key": self._api_key, "Content-Type": "application/json", **headers},
            )
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        return response.status, _parsed(data)

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            secure = self._parts.scheme == "https"
            kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
            self._connection = kind(
                self._parts.hostname or "", self._parts.port, timeout=REQUEST_TIMEOUT_S
            )
        return self._connection


def _parsed(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")[:200]


def _accepted(method: str, path: str, status: int, answer: Any) -> dict[str, Any]:
    if 200 <= status < 300 and isinstance(answer, dict):
        return answer
    raise LaunchError(f"{method} {path}: {_described(status, answer)}")


def _described(status: int, answer: Any) -> str:
    """``422 IdempotencyKeyReused: <detail>`` from a problem+json answer."""
    if isinstance(answer, dict) and "code" in answer:
        return f"{status} {answer['code']}: {answer.get('detail', '')}".rstrip(": ")
    return f"{status} {answer}".rstrip()


# ---- following the batches -------------------------------------------------------------------


@dataclass
class BatchState:
    batch_id: str
    accepted: int
    finished: int = 0


@dataclass
class Tracker:
    """The batches this launch sent, and how many of their items have finished."""

    batches: list[BatchState] = field(default_factory=list)
    unfinished: deque[BatchState] = field(default_factory=deque)

    @property
    def accepted(self) -> int:
        return sum(batch.accepted for batch in self.batches)

    @property
    def finished(self) -> int:
        return sum(batch.finished for batch in self.batches)

    def add(self, batch_id: str, accepted: int) -> None:
        batch = BatchState(batch_id, accepted)
        self.batches.append(batch)
        if accepted:
            self.unfinished.append(batch)

    def poll(self, api: BatchApi) -> None:
        """Reads the oldest unfinished batches, in order, up to the first one still running
        (at most POLLS_PER_ROUND a round). The queues are FIFO, so the batches after it have
        barely started, and each read counts its batch's commands in the database: reading
        them all every round cost PostgreSQL more than a tenth of a big campaign's work."""
        for _ in range(min(POLLS_PER_ROUND, len(self.unfinished))):
            batch = self.unfinished[0]
            counts = api.batch(batch.batch_id)["counts"]
            batch.finished = counts["succeeded"] + counts["failed"]
            if batch.finished < batch.accepted:
                return
            self.unfinished.popleft()


@dataclass
class InvalidRows:
    """Rows the API refused as items, by CSV line; the first few are shown."""

    shown: Callable[[str], None]
    limit: int = SHOWN_INVALID_ROWS
    count: int = 0

    def add(self, label: str, chunk: Chunk, invalid: Iterable[dict[str, Any]]) -> None:
        for item in invalid:
            self.count += 1
            if self.count <= self.limit:
                index = item["index"]
                errors = _errors(item.get("errors"), ["body", "items", index])
                self.shown(f"{label} line {chunk.rows[index].line}: {errors}")

    def close(self, label: str) -> None:
        if self.count > self.limit:
            self.shown(f"{label}: {self.count - self.limit} more invalid rows not shown")


def _errors(errors: Any, item_loc: list[Any]) -> str:
    """``contactId: Input should be a valid UUID, ...``: locations inside the item."""
    if not (isinstance(errors, list) and all(isinstance(e, dict) and "msg" in e for e in errors)):
        return json.dumps(errors)
    return "; ".join(f"{_inside(e.get('loc', []), item_loc)}: {e['msg']}" for e in errors)


def _inside(loc: list[Any], item_loc: list[Any]) -> str:
    inner = loc[len(item_loc) :] if loc[: len(item_loc)] == item_loc else loc
    return ".".join(map(str, inner)) or "item"


# ---- the launch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    contacts: Path
    template_id: str
    campaign_id: str | None = None
    channel_id: str | None = None
    batch_size: int = MAX_BATCH_ITEMS
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class Summary:
    campaign_id: str
    rows: int
    batches: int
    accepted: int
    invalid_rows: int
    finished: int
    all_finished: bool  # every accepted item finished before the timeout
    stats: dict[str, Any]
    stats_complete: bool  # the reporter had counted every finished item before its deadline
    elapsed_s: float

    @property
    def items_per_s(self) -> float:
        return round(self.finished / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "campaignId": self.campaign_id,
            "rows": self.rows,
            "batches": self.batches,
            "accepted": self.accepted,
            "invalidRows": self.invalid_rows,
            "finished": self.finished,
            "allFinished": self.all_finished,
            "created": self.stats["created"],
            "reused": self.stats["reused"],
            "rejected": self.stats["rejected"],
            "statsComplete": self.stats_complete,
            "elapsedS": round(self.elapsed_s, 3),
            "itemsPerS": self.items_per_s,
        }


def launch(
    options: Launch, api_url: str, api_key: str, workspace_id: str, console: Console
) -> Summary:
    """Checks the options, then runs the launch on one connection."""
    if options.campaign_id is not None and not is_campaign_id(options.campaign_id):
        raise UsageError(f"--campaign {options.campaign_id!r}: not 1-128 of A-Z a-z 0-9 . _ - :")
    if not 1 <= options.batch_size <= MAX_BATCH_ITEMS:
        raise UsageError(f"--batch-size must be 1 to {MAX_BATCH_ITEMS}")
    api = BatchApi(api_url, api_key, workspace_id)
    try:
        return run(options, api, console)
    finally:
        api.close()


def run(options: Launch, api: BatchApi, console: Console) -> Summary:
    """Sends every chunk, waits for their items to finish, then for the campaign's stats."""
    started = time.monotonic()
    surveyed = _surveyed(options.contacts)
    plan = Plan(
        options.campaign_id or derived_campaign_id(options.contacts.name, surveyed.digest),
        options.template_id,
        options.channel_id,
    )
    tracker = Tracker()
    with _progress(console, surveyed.rows) as progress:
        invalid = _send_all(options, plan, api, tracker, progress, surveyed.rows)
        deadline = started + options.timeout_s
        all_finished = _wait_finished(tracker, api, progress, deadline, surveyed.rows - invalid)
    stats, complete = _wait_stats(api, plan.campaign_id, tracker.finished)
    return Summary(
        plan.campaign_id,
        surveyed.rows,
        len(tracker.batches),
        tracker.accepted,
        invalid,
        tracker.finished,
        all_finished,
        stats,
        complete,
        time.monotonic() - started,
    )


def _surveyed(contacts: Path) -> Survey:
    try:
        return survey(contacts)
    except OSError as exc:
        raise UsageError(f"cannot read {contacts}: {exc.strerror or type(exc).__name__}") from None
    except CsvFormatError as exc:
        raise CsvFormatError(f"{contacts}: {exc}; nothing sent") from None


def _send_all(
    options: Launch, plan: Plan, api: BatchApi, tracker: Tracker, progress: Progress, rows: int
) -> int:
    """Sends the chunks in file order; the number of rows the API found invalid."""
    label = options.contacts.name
    invalid = InvalidRows(lambda line: _say(progress.console, f"leadscout: {line}"))
    last_poll = time.monotonic()
    with options.contacts.open("rb") as fp:
        for chunk in chunks(read_rows(text_lines(fp)), options.batch_size):
            body = batch_body(plan, chunk)
            answer = _send(api, body, idempotency_key(plan.campaign_id, chunk.index, body), chunk)
            tracker.add(str(answer["batchId"]), int(answer["accepted"]))
            invalid.add(label, chunk, answer["invalid"])
            if time.monotonic() - last_poll >= POLL_INTERVAL_S:
                tracker.poll(api)
                last_poll = time.monotonic()
            _show(progress, tracker, rows - invalid.count)
    invalid.close(label)
    return invalid.count


def _send(api: BatchApi, body: bytes, key: str, chunk: Chunk) -> dict[str, Any]:
    try:
        return api.send(body, key)
    except LaunchError as exc:
        lines = f"lines {chunk.rows[0].line}-{chunk.rows[-1].line}"
        raise LaunchError(
            f"chunk {chunk.index} ({lines}) not accepted: {exc}; chunks before it were, and"
            " running the same command again resumes without sending anything twice"
        ) from None


def _wait_finished(
    tracker: Tracker, api: BatchApi, progress: Progress, deadline: float, expected: int
) -> bool:
    while tracker.finished < tracker.accepted:
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
        tracker.poll(api)
        _show(progress, tracker, expected)
    return True


def _wait_stats(api: BatchApi, campaign_id: str, finished: int) -> tuple[dict[str, Any], bool]:
    """The reporter counts events asynchronously: waits until it has counted them all.

    At least ``finished``, not exactly: other launches may share the campaign.
    """
    deadline = time.monotonic() + STATS_WAIT_S
    while True:
        stats = api.stats(campaign_id)
        if _counted(stats) >= finished:
            return stats, True
        if time.monotonic() >= deadline:
            return stats, False
        time.sleep(POLL_INTERVAL_S)


def _counted(stats: dict[str, Any]) -> int:
    rejected = sum(int(n) for n in stats["rejected"].values())
    return int(stats["created"]) + int(stats["reused"]) + rejected


# ---- showing it ------------------------------------------------------------------------------


def _progress(console: Console, rows: int) -> Progress:
    progress = Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    progress.add_task("accepted", total=rows)
    progress.add_task("finished", total=rows)
    return progress


def _say(console: Console, line: str) -> None:
    """One line as is: not wrapped at the terminal's width, no markup or highlighting."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _show(progress: Progress, tracker: Tracker, total: int) -> None:
    """``total``: the rows not found invalid, which will never be accepted nor finish."""
    accepted, finished = progress.task_ids
    progress.update(accepted, completed=tracker.accepted, total=total)
    progress.update(finished, completed=tracker.finished, total=total)


def table(summary: Summary) -> Table:
    out = Table(show_header=False)
    out.add_column(style="bold")
    out.add_column(justify="right")
    out.add_row("campaign", summary.campaign_id)
    out.add_row("created", str(summary.stats["created"]))
    out.add_row("reused", str(summary.stats["reused"]))
    for code, n in sorted(summary.stats["rejected"].items()):
        out.add_row(f"rejected: {code}", str(n))
    if not summary.stats["rejected"]:
        out.add_row("rejected", "0")
    out.add_row("invalid rows", str(summary.invalid_rows))
    out.add_row("elapsed", f"{summary.elapsed_s:.1f} s")
    out.add_row("rate", f"{summary.items_per_s} items/s")
    out.caption = _caveat(summary)
    return out


def _caveat(summary: Summary) -> str | None:
    if not summary.all_finished:
        return (
            f"timed out: {summary.finished} of {summary.accepted} accepted items had finished;"
            " the rest will, and the campaign's stats will count them"
        )
    if not summary.stats_complete:
        return (
            f"the reporter had counted {_counted(summary.stats)} of {summary.finished} finished"
            f" items after {STATS_WAIT_S:.0f} s: these stats are not final"
        )
    return None
