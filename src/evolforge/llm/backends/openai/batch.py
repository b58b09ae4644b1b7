"""The batch API of an openai role (``batch_api``): a stage's requests go to the provider's batch endpoints
instead of one request each -- a JSONL upload (``POST /files``, purpose ``batch``), one job per
``batch_max_requests`` (``POST /batches``), polled every ``batch_poll_s`` seconds (``GET /batches/{id}``) with
a progress bar, and the output and error files read line by line (``GET /files/{id}/content``), each result
handed back as it is read. Each line's ``custom_id`` is the request's cache key.

The job ids are kept in the call cache's database (:meth:`CallCache.put_batch_job`), so a stage killed while
it waits (or while it reads the results) polls the same jobs when it runs again instead of submitting (and
paying for) them twice. Once a job has ended and its results were handed back, its status is recorded and it
is never resumed: a rerun submits what it did not answer anew. A line's error becomes that item's failure
(``request_rejected`` with the provider's message; ``retries_exhausted`` for a 5xx or a request the job did not
reach before it ended).

>>> list(chunks([0, 1, 2, 3, 4], lambda i: 10, max_items=2, max_bytes=100))
[[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator, Sequence

import orjson

from evolforge.llm.cache import CallCache, batch_job_key
from evolforge.llm.requests import ChatRequest
from evolforge.llm.types import PROMPT_TOO_LONG, REQUEST_REJECTED, RETRIES_EXHAUSTED, Completion
from evolforge.llm.backends.openai.http import (RETRY_STATUSES, TOO_LONG, Finished, LLMRequestError, Waker,
                                                completion_from, parse_retry_after, preview, server_message)
from evolforge.llm.backends.openai.request import unwrap_answer
from evolforge.llm.backends.openai.transport import CAUSE_CHARS, Causes

log = logging.getLogger(__name__)

BATCH_ENDPOINT = "/v1/chat/completions"  # as a batch line's "url" and the job's "endpoint" name it
# statuses of a batch job (OpenAI's names): those worth polling again, and those that end it. A job's
# ended status is recorded only once all its results were handed back, so a stop while its files are
# read resumes it (and reads them again); a job recorded as ended is never resumed: a rerun submits
# what it did not answer (its failures) anew.
BATCH_RESUMABLE = ("validating", "in_progress", "finalizing", "cancelling")
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")
BATCH_MAX_BYTES = 190 * 2**20  # an input file's size, under OpenAI's 200 MB per batch


def chunks(items: list[int], size, max_items: int, max_bytes: int) -> Iterator[list[int]]:
    """Consecutive runs of ``items`` with at most ``max_items`` items and ``max_bytes`` of ``size(item)``
    (an item larger than ``max_bytes`` goes alone: the provider's refusal names it)."""
    chunk: list[int] = []
    total = 0
    for item in items:
        n = size(item)
        if chunk and (len(chunk) >= max_items or total + n > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk


class Job:
    """A batch job being waited for: ``ids`` are the custom ids (cache keys) it answers for this run."""

    def __init__(self, job: str, batch_id: str, status: str, ids: list[str], resumed: bool = False):
        self.job, self.batch_id, self.status, self.ids, self.resumed = job, batch_id, status, ids, resumed
        self.recorded = status  # the status the cache holds for it
        self.progress = 0  # requests it has finished, as its request_counts say


class BatchJobs:
    """The batch path of ``backend`` (an :class:`~evolforge.llm.backends.openai.client.OpenAIBackend` with
    ``batch_api``): its settings, and its transport's sessions, retry delays and redaction, serve the calls to the
    batch endpoints."""

    def __init__(self, backend):
        self.backend = backend
        self.transport = backend.transport

    async def serve(self, requests: Sequence[ChatRequest], done: Finished, run: Waker,
                    cache: CallCache | None, keys: Sequence[str] | None) -> None:
        """Resume the recorded jobs that answer any of ``requests``, submit the rest as new jobs, poll them
        all until they end and hand back each result as its file is read."""
        ids = list(keys) if keys is not None else [f"request-{i}" for i in range(len(requests))]
        if len(set(ids)) != len(ids):
            raise ValueError("a batch job needs distinct requests (identical ones are one cache key)")
        if cache is None or keys is None:
            log.warning("%s: batch jobs without a call cache cannot be resumed after a stop", self.backend.model)
        position = {cid: i for i, cid in enumerate(ids)}
        todo: list[int] = []
        for i, request in enumerate(requests):
            refused = self.backend.too_long(request)
            if refused is not None:
                done.append((i, refused))
            else:
                todo.append(i)
        run.wake()
        async with self.transport.session(4, json_body=False) as session:
            jobs: list[Job] = []
            if cache is not None and keys is not None:
                for job in cache.batch_jobs_for([ids[i] for i in todo], BATCH_RESUMABLE):
                    log.info("resuming batch job %s (%s) for %d requests", job.batch_id, job.status, len(job.keys))
                    jobs.append(Job(job.job, job.batch_id, job.status, list(job.keys), resumed=True))
                resumed = {cid for job in jobs for cid in job.ids}
                todo = [i for i in todo if ids[i] not in resumed]
            lines = {i: orjson.dumps({"custom_id": ids[i], "method": "POST", "url": BATCH_ENDPOINT,
                                      "body": self.backend.payload(requests[i])}) + b"\n" for i in todo}
            for chunk in chunks(todo, lambda i: len(lines[i]), self.backend.batch_max_requests, BATCH_MAX_BYTES):
                jobs.append(await self._submit(session, [ids[i] for i in chunk],
                                               b"".join(lines[i] for i in chunk), cache))
            await self._await_jobs(session, jobs, requests, position, done, run, cache)

    async def _submit(self, session, ids: list[str], lines: bytes, cache: CallCache | None) -> Job:
        """Upload one job's JSONL ``lines`` (one per id) and create the job; it is recorded before it is polled."""
        import aiohttp

        def form() -> aiohttp.FormData:  # a FormData is spent once sent: one per attempt
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", lines, filename="evolforge-batch.jsonl", content_type="application/jsonl")
            return data

        uploaded = await self._call(session, "POST", "/files", form=form)
        batch = await self._call(session, "POST", "/batches", body={
            "input_file_id": uploaded["id"], "endpoint": BATCH_ENDPOINT,
            "completion_window": self.backend.batch_completion_window, "metadata": {"source": "evolforge"}})
        job = Job(batch_job_key(ids), batch["id"], batch.get("status", "validating"), ids)
        if cache is not None:  # recorded before the first poll: a stop from here on resumes this job
            cache.put_batch_job(job.job, job.batch_id, job.status, ids)
        log.info("submitted batch job %s: %d requests", job.batch_id, len(ids))
        return job

    async def _await_jobs(self, session, jobs: list[Job], requests: Sequence[ChatRequest], position: dict[str, int],
                          done: Finished, run: Waker, cache: CallCache | None) -> None:
        from tqdm.auto import tqdm

        with tqdm(total=sum(len(j.ids) for j in jobs), desc=f"{self.backend.model} batch",
                  unit="req", leave=False) as bar:
            active = list(jobs)
            while active:
                for job in list(active):
                    try:
                        info = await self._call(session, "GET", f"/batches/{job.batch_id}")
                    except LLMRequestError as err:
                        if err.status == 404 and job.resumed and cache is not None:
                            cache.set_batch_status(job.job, "missing")  # the next run submits its requests anew
                        raise
                    job.status = status = str(info.get("status"))
                    counts = info.get("request_counts") or {}
                    job.progress = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
                    if status in BATCH_ENDED:
                        await self._collect(session, job, info, requests, position, done, run)
                        job.progress = len(job.ids)
                        active.remove(job)
                    if cache is not None and status != job.recorded:
                        cache.set_batch_status(job.job, status)  # an ended job: after its results
                        job.recorded = status
                bar.n = min(bar.total, sum(j.progress for j in jobs))
                bar.set_postfix_str(", ".join(sorted({j.status for j in jobs})), refresh=False)
                bar.refresh()
                if active:
                    await self._wait_poll()

    async def _wait_poll(self) -> None:
        await asyncio.sleep(self.backend.batch_poll_s)

    async def _collect(self, session, job: Job, info: dict, requests: Sequence[ChatRequest],
                       position: dict[str, int], done: Finished, run: Waker) -> None:
        """Hand back every result of an ended job: its output and error files, then a failure for each
        request neither file answers."""
        mine = {position[cid] for cid in job.ids if cid in position}
        seen: set[int] = set()

        def take(line: bytes) -> None:
            try:
                item = orjson.loads(line)
                i = position.get(item.get("custom_id"))
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                log.warning("batch %s: an unreadable result line: %s", job.batch_id, preview(line))
                return
            if i is None or i not in mine or i in seen:  # another run's request, or read twice after a retry
                return
            seen.add(i)
            done.append((i, unwrap_answer(requests[i], self._batch_result(item), self.backend.choice_format)))

        for file_id in (info.get("output_file_id"), info.get("error_file_id")):
            if file_id:
                await self._read_lines(session, f"/files/{file_id}/content", take, run)
        if job.status == "failed":
            errors = ((info.get("errors") or {}).get("data") or [])
            why = "; ".join(str(e.get("message", e)) for e in errors[:3]) or "no reason given"
            reason, message = REQUEST_REJECTED, f"batch {job.batch_id} failed: {why}"
        else:
            reason, message = RETRIES_EXHAUSTED, f"batch {job.batch_id} ended {job.status} without a result for it"
        for i in sorted(mine - seen):
            done.append((i, Completion.failure(reason, self.transport.redact(message))))
        run.wake()
        log.info("batch job %s %s: %d results, %d without", job.batch_id, job.status, len(seen), len(mine - seen))

    def _batch_result(self, item: dict) -> Completion:
        """One line of an output or error file as a completion or that item's failure."""
        response = item.get("response") or {}
        status = response.get("status_code")
        error = item.get("error")
        if not error and status == 200:
            completion = completion_from(response.get("body"))
            if completion is not None:
                return completion
            return Completion.failure(RETRIES_EXHAUSTED,
                                      f"malformed result: {preview(orjson.dumps(response.get('body')))}")
        body = response.get("body")
        detail = (error or {}).get("message") if isinstance(error, dict) else error
        if not detail and isinstance(body, dict):
            detail = (body.get("error")
                      or {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        message = str(detail or preview(orjson.dumps(body)))
        code = (error or {}).get("code") if isinstance(error, dict) else None
        if TOO_LONG.search(message):
            reason = PROMPT_TOO_LONG
        elif (status or 0) >= 500 or status in RETRY_STATUSES or code in ("batch_expired", "batch_cancelled"):
            reason = RETRIES_EXHAUSTED
        else:
            reason = REQUEST_REJECTED
        return Completion.failure(reason, self.transport.redact(f"HTTP {status}: {message}" if status else message))

    async def _call(self, session, method: str, path: str, *, body: dict | None = None, form=None) -> dict:
        """One call to the batch endpoints, retried like a chat request (408/409/429/5xx, connection errors,
        timeouts); any other status stops the run (the job ids recorded so far are kept)."""
        import aiohttp

        url = self.backend.base_url + path
        attempts = self.transport.max_retries + 1
        causes = Causes()
        for attempt in range(1, attempts + 1):
            retry_after = status = None
            kwargs: dict[str, Any] = {"data": form()} if form is not None else {}
            if body is not None:
                kwargs = {"data": orjson.dumps(body), "headers": {"Content-Type": "application/json"}}
            try:
                async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
                    status, raw = resp.status, await resp.read()
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                cause = f"no response within {self.transport.timeout_s:g}s"
            except (aiohttp.ClientError, OSError) as err:
                cause = f"connection error: {type(err).__name__}: {err}"
            else:
                if status == 200:
                    try:
                        answer = orjson.loads(raw)
                        if isinstance(answer, dict):
                            return answer
                    except orjson.JSONDecodeError:
                        pass
                    cause = f"not a JSON object: {preview(raw)}"
                elif status in RETRY_STATUSES or status >= 500:
                    cause = f"HTTP {status}: {server_message(raw[:CAUSE_CHARS])}"
                else:
                    raise LLMRequestError(self.transport.redact(f"{method} {url}: HTTP {status}: {preview(raw)}"),
                                          status)
            causes.add(cause)
            if attempt == attempts:
                raise LLMRequestError(self.transport.redact(f"{method} {url}: {causes.summary()}; the batch jobs "
                                                            f"submitted so far are recorded, a rerun resumes them"))
            await asyncio.sleep(self.transport.retry_delay(attempt, retry_after, throttled=status == 429))
        raise AssertionError("unreachable")

    async def _read_lines(self, session, path: str, take, run: Waker) -> None:
        """Stream a JSONL file, ``take`` each line as it arrives (a retry reads it again from the start:
        ``take`` skips what it has seen)."""
        import aiohttp

        url = self.backend.base_url + path
        attempts = self.transport.max_retries + 1
        causes = Causes()
        for attempt in range(1, attempts + 1):
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status != 200:
                        raw = await resp.read()
                        if resp.status in RETRY_STATUSES or resp.status >= 500:
                            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                              message=preview(raw))
                        raise LLMRequestError(self.transport.redact(f"GET {url}: HTTP {resp.status}: {preview(raw)}"),
                                              resp.status)
                    rest = b""
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        lines = (rest + chunk).split(b"\n")
                        rest = lines.pop()
                        for line in lines:
                            if line.strip():
                                take(line)
                        run.wake()  # hand back what this chunk finished
                    if rest.strip():
                        take(rest)
                    return
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as err:
                causes.add(f"{type(err).__name__}: {err}")
                if attempt == attempts:
                    raise LLMRequestError(self.transport.redact(f"GET {url}: {causes.summary()}")) from None
                await asyncio.sleep(self.transport.retry_delay(attempt, None))
