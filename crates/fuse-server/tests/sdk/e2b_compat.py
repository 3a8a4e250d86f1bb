#!/usr/bin/env python3
"""Compatibility of Fuse's E2B front door with the published Python SDK of E2B
(`e2b` 2.63.0 on PyPI), used unchanged and exactly as a user would (sync API,
`from e2b import Sandbox`).

Creates a sandbox, runs commands in it (output, streaming, exit codes, envs, cwd,
background processes, stdin), works on its files, reaches a server in it through
`get_host`, changes its timeout, lists, connects, pauses and resumes it, and kills it,
asserting what comes back: values and shapes, not only "no exception". One line is
printed per check; the first failed check ends the run with exit code 1 and a message
naming it (`--keep-going` runs on and reports every failure, for diagnosis). Every
sandbox the run created is killed at the end, whatever happened. The last lines are
`E2B-TIMINGS {...}` (JSON: create_s, first_command_s, file_roundtrip_s, resume_s) and
`e2b compat: N checks passed`.

Only the standard library and the SDK are used. Environment: E2B_API_URL (Fuse's E2B
API, e.g. http://127.0.0.1:PORT/e2b), E2B_API_KEY, E2B_SANDBOX_URL (Fuse's address: the
SDK sends every envd request there with the E2b-Sandbox-Id / E2b-Sandbox-Port headers),
E2B_DOMAIN (a domain with no DNS, e.g. e2b.fuse.test), FUSE_ADDR (host:port of Fuse,
where `get_host` names are reached with a `Host:` header), E2B_TEMPLATE (default
"base"), E2B_SHARED_ROOT=1 (optional: commands and files see the same root, so a file
written with `files.write` is read back by `cat`), E2B_COMPAT_KEEP_GOING=1 (as
`--keep-going`; FUSE_SDK_KEEP_GOING=1 too).

What each check exercises in the SDK (package e2b):
  Sandbox.create ................ sandbox_sync/main.py (create, _create),
                                  sandbox_sync/sandbox_api.py (_create_sandbox: POST /v2/sandboxes)
  commands.run (fg, callbacks,
    streaming, exit, envs, cwd) . sandbox_sync/commands/command.py (run, _start),
                                  sandbox_sync/commands/command_handle.py (wait, _handle_events),
                                  sandbox/commands/command_handle.py (CommandResult, CommandExitException)
  background, list, kill, stdin . sandbox_sync/commands/command.py (list, kill, send_stdin, close_stdin),
                                  envd/rpc.py (kill_process), sandbox/commands/main.py (ProcessInfo)
  files.* ....................... sandbox_sync/filesystem/filesystem.py (write, read, list, exists,
                                  make_dir, rename, get_info, remove), sandbox/filesystem/filesystem.py
                                  (WriteInfo, EntryInfo, FileType), exceptions.py (FileNotFoundException)
  get_host ...................... sandbox/main.py (SandboxBase.get_host), connection_config.py (get_host)
  set_timeout, get_info ......... sandbox_sync/main.py, sandbox_sync/sandbox_api.py (_cls_set_timeout,
                                  _cls_get_info), sandbox/sandbox_api.py (SandboxInfo, SandboxState)
  Sandbox.list .................. sandbox_sync/sandbox_api.py (list), sandbox_sync/paginator.py
                                  (SandboxPaginator.next_items), paginator.py (has_next, x-next-token),
                                  sandbox/sandbox_api.py (SandboxQuery)
  Sandbox.connect ............... sandbox_sync/main.py (_cls_connect_sandbox),
                                  sandbox_sync/sandbox_api.py (_cls_connect: POST /v2/sandboxes/{id}/connect)
  pause / resume ................ sandbox_sync/main.py (pause), sandbox_sync/sandbox_api.py (_cls_pause)
  kill, not found ............... sandbox_sync/main.py (kill), sandbox_sync/sandbox_api.py (_cls_kill,
                                  404 -> False / SandboxNotFoundException), exceptions.py
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import secrets
import shlex
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

import e2b
from e2b import (
    CommandExitException,
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)

E2B_SDK_VERSION = "2.63.0"

DIR = "/srv/fuse-e2b"
HELLO = f"{DIR}/hello.txt"
BLOB = f"{DIR}/blob.bin"
RENAMED = f"{DIR}/hello-renamed.txt"
SUB = f"{DIR}/sub"
KEEP = "/srv/fuse-e2b-keep.txt"
WATCHED = "/srv/fuse-e2b-watched"
BLOB_SIZE = 300 * 1024
SERVER_PORT = 8000
SERVER_BODY = b"fuse-e2b-ok"

# A server answering a fixed body on every GET: commands and files may see different
# roots on one backend, so the server must not depend on a file written with files.write.
SERVER_SCRIPT = f"""\
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = {SERVER_BODY!r}
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", {SERVER_PORT}), H).serve_forever()
"""


class CheckFailed(Exception):
    """One assertion of the contract that does not hold."""


class Skipped(Exception):
    """A check that does not apply to this run."""


def ensure(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def eq(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


def raises(fn: Callable[[], Any], cls: type, what: str) -> BaseException:
    """Calls `fn`, which must raise `cls` (or a subclass); returns the exception."""
    try:
        got = fn()
    except cls as e:  # type: ignore[misc]
        return e
    except Exception as e:  # noqa: BLE001 - the wrong class is the finding
        raise CheckFailed(
            f"{what}: expected {cls.__name__}, got {describe(e)}"
        ) from e
    raise CheckFailed(f"{what}: expected {cls.__name__}, the call returned {got!r}")


def describe(e: BaseException) -> str:
    """Type and message of an exception, with the HTTP status the SDK recorded."""
    status = getattr(e, "status_code", None)
    extra = f" (status_code={status})" if status is not None else ""
    return f"{type(e).__module__}.{type(e).__name__}{extra}: {e}"


def all_items(paginator: Any, what: str) -> tuple[list[Any], list[int]]:
    """Every item of a SandboxPaginator, and the size of each page."""
    items: list[Any] = []
    sizes: list[int] = []
    while paginator.has_next:
        page = paginator.next_items()
        ensure(isinstance(page, list), f"{what}: next_items returned {type(page).__name__}, not a list")
        items.extend(page)
        sizes.append(len(page))
        ensure(len(sizes) < 50, f"{what}: paging does not end")
    return items, sizes


class Run:
    """The state of one run: the sandboxes created, the checks done, the timings."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.template = args.template
        self.domain = args.domain
        self.fuse_addr = args.fuse_addr
        self.shared_root = args.shared_root
        self.keep_going = args.keep_going
        self.run_id = secrets.token_hex(8)
        self.metadata = {"suite": "e2b-compat", "run": self.run_id}
        self.created: list[str] = []
        self.failures: list[str] = []
        self.passed = 0
        self.skipped = 0
        self.timings: dict[str, Optional[float]] = {
            "create_s": None,
            "first_command_s": None,
            "file_roundtrip_s": None,
            "resume_s": None,
        }
        self.sbx: Optional[Sandbox] = None
        self.sbx3: Optional[Sandbox] = None
        self.blob = os.urandom(BLOB_SIZE)
        self.cleaned = False

    # -- plumbing ------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], Optional[str]]) -> None:
        """Runs one check; prints `ok <name>` (and what it saw) or `FAIL <name>: why`."""
        started = time.monotonic()
        try:
            note = fn()
        except Skipped as e:
            self.skipped += 1
            print(f"skip {name}: {e}", flush=True)
            return
        except CheckFailed as e:
            self.fail(name, str(e))
            return
        except Exception as e:  # noqa: BLE001 - an SDK error is a finding
            self.fail(name, f"unexpected {describe(e)}\n{traceback.format_exc()}")
            return
        self.passed += 1
        took = time.monotonic() - started
        print(f"ok   {name} ({took:.2f}s){': ' + note if note else ''}", flush=True)

    def fail(self, name: str, why: str) -> None:
        print(f"FAIL {name}: {why}", flush=True)
        self.failures.append(name)
        if not self.keep_going:
            print(f"\n{self.passed} checks passed before the first failure ({name})", flush=True)
            self.print_timings()
            self.cleanup()
            sys.exit(1)

    def need(self, value: Any, what: str) -> Any:
        ensure(value is not None, f"needs {what}, which an earlier check did not produce")
        return value

    def sandbox(self) -> Sandbox:
        return self.need(self.sbx, "the sandbox from Sandbox.create")

    def cleanup(self) -> None:
        """Best effort: kills every sandbox this run created (a killed one answers False)."""
        if self.cleaned:
            return
        self.cleaned = True
        for sandbox_id in self.created:
            try:
                Sandbox.kill(sandbox_id)
            except Exception as e:  # noqa: BLE001 - cleanup never hides the failure
                print(f"cleanup: kill {sandbox_id}: {describe(e)}", flush=True)

    def print_timings(self) -> None:
        rounded = {k: (round(v, 3) if v is not None else None) for k, v in self.timings.items()}
        print(f"E2B-TIMINGS {json.dumps(rounded)}", flush=True)

    def listed(self, metadata: dict[str, str], limit: Optional[int] = None) -> tuple[list[Any], list[int]]:
        paginator = Sandbox.list(query=SandboxQuery(metadata=metadata), limit=limit)
        return all_items(paginator, f"Sandbox.list(metadata={metadata}, limit={limit})")

    # -- checks: lifecycle ---------------------------------------------------------------

    def create(self) -> str:
        started = time.monotonic()
        sbx = Sandbox.create(
            self.template,
            timeout=120,
            metadata=self.metadata,
            envs={"FUSE_E2B_VAR": "from-create"},
        )
        self.timings["create_s"] = time.monotonic() - started
        ensure(isinstance(sbx, Sandbox), f"Sandbox.create returned {type(sbx).__name__}")
        ensure(
            isinstance(sbx.sandbox_id, str) and bool(sbx.sandbox_id),
            f"sandbox_id is not a non-empty string: {sbx.sandbox_id!r}",
        )
        self.created.append(sbx.sandbox_id)
        self.sbx = sbx
        return (
            f"id={sbx.sandbox_id} domain={sbx.sandbox_domain} "
            f"create={self.timings['create_s']:.2f}s"
        )

    # -- checks: commands ----------------------------------------------------------------

    def first_command(self) -> str:
        sbx = self.sandbox()
        out: list[str] = []
        err: list[str] = []
        started = time.monotonic()
        r = sbx.commands.run(
            "echo hello; echo oops >&2; echo $FUSE_E2B_VAR",
            on_stdout=out.append,
            on_stderr=err.append,
        )
        self.timings["first_command_s"] = time.monotonic() - started
        eq(r.exit_code, 0, "exit_code")
        eq(r.stdout, "hello\nfrom-create\n", "stdout (envs given to Sandbox.create reach commands)")
        eq(r.stderr, "oops\n", "stderr")
        eq(r.error, None, "error of a command that succeeded")
        eq("".join(out), "hello\nfrom-create\n", "what on_stdout received")
        eq("".join(err), "oops\n", "what on_stderr received")
        return f"first command {self.timings['first_command_s']:.2f}s"

    def streaming(self) -> str:
        sbx = self.sandbox()
        chunks: list[tuple[float, str]] = []
        started = time.monotonic()
        r = sbx.commands.run(
            "for i in 1 2 3; do echo line$i; sleep 0.4; done",
            on_stdout=lambda s: chunks.append((time.monotonic(), s)),
        )
        finished = time.monotonic()
        eq(r.exit_code, 0, "exit_code")
        eq(r.stdout, "line1\nline2\nline3\n", "stdout")
        eq("".join(s for _, s in chunks), r.stdout, "what on_stdout received")
        eq("".join(s for _, s in chunks).splitlines(), ["line1", "line2", "line3"], "lines received")

        def arrival(line: str) -> float:
            for at, s in chunks:
                if line in s:
                    return at
            raise CheckFailed(f"no chunk carries {line!r}: {chunks!r}")

        first, last = arrival("line1"), arrival("line3")
        offsets = ", ".join(f"{at - started:.2f}s {s!r}" for at, s in chunks)
        ensure(
            finished - first >= 0.5,
            f"line1 arrived only {finished - first:.2f}s before the command finished "
            f"(want >= 0.5s: output is buffered, not streamed): chunks at {offsets}",
        )
        ensure(
            last - first >= 0.6,
            f"line3 arrived {last - first:.2f}s after line1 (produced 0.8s apart; want >= 0.6s): "
            f"chunks at {offsets}",
        )
        return f"{len(chunks)} chunks at {offsets}; finished {finished - started:.2f}s"

    def exit_code(self) -> str:
        sbx = self.sandbox()
        e = raises(lambda: sbx.commands.run("exit 3"), CommandExitException, 'commands.run("exit 3")')
        assert isinstance(e, CommandExitException)
        eq(e.exit_code, 3, "exit_code of the CommandExitException")
        ensure(isinstance(e, SandboxException), "CommandExitException is not a SandboxException")
        eq(e.stdout, "", "stdout of exit 3")
        eq(e.stderr, "", "stderr of exit 3")
        e2 = raises(
            lambda: sbx.commands.run("echo partial; echo bad >&2; exit 7"),
            CommandExitException,
            "a command with output that exits 7",
        )
        assert isinstance(e2, CommandExitException)
        eq(e2.exit_code, 7, "exit_code")
        eq(e2.stdout, "partial\n", "stdout carried by the CommandExitException")
        eq(e2.stderr, "bad\n", "stderr carried by the CommandExitException")
        return f"exit_code=3, then 7 with stdout/stderr; str={str(e2)!r}"

    def envs_cwd(self) -> str:
        sbx = self.sandbox()
        r = sbx.commands.run("echo $A", envs={"A": "b"})
        eq(r.stdout, "b\n", "stdout of `echo $A` with envs={'A': 'b'}")
        eq(r.exit_code, 0, "exit_code")
        r = sbx.commands.run("echo $FUSE_E2B_VAR-$A", envs={"A": "c"})
        eq(r.stdout, "from-create-c\n", "per-command envs alongside the sandbox's envs")
        r = sbx.commands.run("pwd", cwd="/tmp")
        if self.shared_root:
            eq(r.stdout, "/tmp\n", "stdout of `pwd` with cwd=/tmp")
        else:
            # The `process` backend's guest root is a directory of the host: the command
            # runs in that root's /tmp, which the host names by its full path.
            ensure(r.stdout.endswith("/tmp\n"), f"stdout of `pwd` with cwd=/tmp: {r.stdout!r}")
        return "envs and cwd applied"

    def background_kill(self) -> str:
        sbx = self.sandbox()
        h = sbx.commands.run("sleep 60", background=True)
        ensure(isinstance(h, e2b.CommandHandle), f"background=True returned {type(h).__name__}")
        ensure(isinstance(h.pid, int) and h.pid > 0, f"pid is not a positive int: {h.pid!r}")
        procs = sbx.commands.list()
        ensure(isinstance(procs, list), f"commands.list returned {type(procs).__name__}")
        mine = [p for p in procs if p.pid == h.pid]
        ensure(bool(mine), f"pid {h.pid} not in commands.list(): {[p.pid for p in procs]}")
        p = mine[0]
        ensure(isinstance(p, e2b.ProcessInfo), f"commands.list item is {type(p).__name__}")
        ensure(
            "sleep 60" in " ".join([p.cmd, *p.args]),
            f"the listed process does not show `sleep 60`: cmd={p.cmd!r} args={p.args!r}",
        )
        eq(sbx.commands.kill(h.pid), True, "commands.kill of a running command")
        # A SIGKILLed process ends with a non-zero exit code (envd reports -1 and
        # error "signal: killed"): wait() raises CommandExitException.
        e = raises(h.wait, CommandExitException, "wait() on a killed command")
        assert isinstance(e, CommandExitException)
        ensure(e.exit_code != 0, f"a killed command exited 0: {e!r}")
        deadline = time.monotonic() + 5
        while True:
            pids = [q.pid for q in sbx.commands.list()]
            if h.pid not in pids:
                break
            ensure(time.monotonic() < deadline, f"pid {h.pid} still in commands.list() 5s after kill: {pids}")
            time.sleep(0.2)
        eq(sbx.commands.kill(h.pid), False, "commands.kill of a command that is gone")
        return f"pid={h.pid} cmd={p.cmd!r} args={p.args!r}; killed: exit_code={e.exit_code} error={e.error!r}"

    def background_stdin(self) -> str:
        sbx = self.sandbox()
        h = sbx.commands.run("cat", background=True, stdin=True)
        ensure(isinstance(h.pid, int) and h.pid > 0, f"pid is not a positive int: {h.pid!r}")
        sbx.commands.send_stdin(h.pid, "piped\n")
        # One client-streamed request carrying several chunks (StreamInput).
        sbx.commands.stream_input(h.pid, ["streamed ", b"in ", "chunks\n"])
        sbx.commands.close_stdin(h.pid)
        r = h.wait()
        eq(r.exit_code, 0, "exit_code of cat after stdin is closed")
        eq(r.stdout, "piped\nstreamed in chunks\n", "stdout of cat fed through send_stdin and stream_input")
        eq(r.stderr, "", "stderr")
        return f"pid={h.pid}"

    # -- checks: files -------------------------------------------------------------------

    def files_text(self) -> str:
        sbx = self.sandbox()
        info = sbx.files.write(HELLO, "hi there")
        ensure(isinstance(info, e2b.WriteInfo), f"files.write returned {type(info).__name__}")
        ensure(info.path.endswith("hello.txt"), f"WriteInfo.path does not end with hello.txt: {info.path!r}")
        eq(info.name, "hello.txt", "WriteInfo.name")
        got = sbx.files.read(HELLO)
        eq(got, "hi there", "files.read (text)")
        # Metadata on a file (envd 0.6.2: X-Metadata-* headers, kept as user.e2b.* xattrs).
        meta = {"purpose": "fuse-e2b", "run": self.run_id}
        tagged = sbx.files.write(f"{DIR}/tagged.txt", "tagged", metadata=meta)
        eq(tagged.metadata, meta, "WriteInfo.metadata of an upload with metadata")
        eq(sbx.files.get_info(f"{DIR}/tagged.txt").metadata, meta, "get_info metadata")
        sbx.files.write(f"{DIR}/tagged.txt", "untagged")
        eq(sbx.files.get_info(f"{DIR}/tagged.txt").metadata, None, "metadata cleared by an upload without it")
        sbx.files.remove(f"{DIR}/tagged.txt")
        return f"path={info.path} type={info.type}; metadata kept and replaced"

    def files_bytes(self) -> str:
        sbx = self.sandbox()
        started = time.monotonic()
        info = sbx.files.write(BLOB, self.blob)
        got = sbx.files.read(BLOB, format="bytes")
        self.timings["file_roundtrip_s"] = time.monotonic() - started
        ensure(info.path.endswith("blob.bin"), f"WriteInfo.path does not end with blob.bin: {info.path!r}")
        ensure(isinstance(got, (bytes, bytearray)), f"read(format='bytes') returned {type(got).__name__}")
        if bytes(got) != self.blob:
            first = next((i for i, (a, b) in enumerate(zip(got, self.blob)) if a != b), min(len(got), len(self.blob)))
            raise CheckFailed(
                f"read back {len(got)} bytes, wrote {len(self.blob)}; first difference at byte {first}"
            )
        # The same bytes compressed on the way (octet-stream with Content-Encoding: gzip).
        gz_path = f"{DIR}/blob-gzip.bin"
        sbx.files.write(gz_path, self.blob, gzip=True)
        eq(bytes(sbx.files.read(gz_path, format="bytes")), self.blob, "a gzip upload read back")
        sbx.files.remove(gz_path)
        return f"{BLOB_SIZE} bytes, write + read {self.timings['file_roundtrip_s']:.2f}s; gzip upload too"

    def files_list_exists(self) -> str:
        sbx = self.sandbox()
        entries = sbx.files.list(DIR)
        ensure(isinstance(entries, list), f"files.list returned {type(entries).__name__}")
        by_name = {e.name: e for e in entries}
        for name in ("hello.txt", "blob.bin"):
            ensure(name in by_name, f"files.list({DIR!r}) lacks {name}: {sorted(by_name)}")
            eq(by_name[name].type, FileType.FILE, f"type of {name} in files.list")
            eq(by_name[name].path, f"{DIR}/{name}", f"path of {name} in files.list")
        eq(by_name["blob.bin"].size, BLOB_SIZE, "size of blob.bin in files.list")
        eq(sbx.files.exists(HELLO), True, f"files.exists({HELLO!r})")
        eq(sbx.files.exists(DIR), True, f"files.exists({DIR!r}) (a directory)")
        eq(sbx.files.exists(f"{DIR}/no-such-file"), False, "files.exists of a missing file")
        return f"entries={sorted(by_name)}"

    def files_shared_root(self) -> str:
        if not self.shared_root:
            raise Skipped("E2B_SHARED_ROOT is not 1: commands and files may see different roots")
        sbx = self.sandbox()
        r = sbx.commands.run(f"cat {HELLO}")
        eq(r.stdout, "hi there", "a command reading the file written with files.write")
        sbx.commands.run(f"echo from-command > {DIR}/from-command.txt")
        eq(sbx.files.read(f"{DIR}/from-command.txt"), "from-command\n", "files.read of a file a command wrote")
        return "commands and files see the same files"

    def files_dir_rename(self) -> str:
        sbx = self.sandbox()
        eq(sbx.files.make_dir(SUB), True, f"files.make_dir({SUB!r})")
        eq(sbx.files.make_dir(SUB), False, "files.make_dir of an existing directory")
        eq(sbx.files.get_info(SUB).type, FileType.DIR, "get_info type of the new directory")
        moved = sbx.files.rename(HELLO, RENAMED)
        ensure(isinstance(moved, e2b.EntryInfo), f"files.rename returned {type(moved).__name__}")
        eq(moved.name, "hello-renamed.txt", "name of the renamed file")
        eq(moved.path, RENAMED, "path of the renamed file")
        names = {e.name: e.type for e in sbx.files.list(DIR)}
        ensure("hello-renamed.txt" in names, f"the new name is not listed: {sorted(names)}")
        ensure("hello.txt" not in names, f"the old name is still listed: {sorted(names)}")
        eq(names.get("sub"), FileType.DIR, "type of sub in files.list")
        eq(sbx.files.exists(HELLO), False, "files.exists of the old name")
        eq(sbx.files.read(RENAMED), "hi there", "files.read of the renamed file")
        return f"renamed to {moved.path}"

    def files_info_remove(self) -> str:
        sbx = self.sandbox()
        info = sbx.files.get_info(BLOB)
        ensure(isinstance(info, e2b.EntryInfo), f"files.get_info returned {type(info).__name__}")
        eq(info.size, BLOB_SIZE, "get_info size")
        eq(info.type, FileType.FILE, "get_info type")
        eq(info.name, "blob.bin", "get_info name")
        eq(info.path, BLOB, "get_info path")
        eq(sbx.files.remove(BLOB), None, "files.remove returns None")
        eq(sbx.files.exists(BLOB), False, "files.exists after remove")
        e = raises(lambda: sbx.files.read(BLOB), FileNotFoundException, "files.read of a removed file")
        ensure(isinstance(e, NotFoundException), "FileNotFoundException is not a NotFoundException")
        raises(lambda: sbx.files.get_info(BLOB), FileNotFoundException, "files.get_info of a removed file")
        return (
            f"size={info.size} mode={oct(info.mode)} permissions={info.permissions} "
            f"owner={info.owner}; then {type(e).__name__}"
        )

    # -- checks: get_host ----------------------------------------------------------------

    def get(self, host: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.fuse_addr, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get_host(self) -> str:
        sbx = self.sandbox()
        # E2B_HTTP_SERVER: the command to use instead, for guests without Python (busybox's
        # httpd answering SERVER_BODY at /).
        server = os.environ.get("E2B_HTTP_SERVER") or f"python3 -c {shlex.quote(SERVER_SCRIPT)}"
        h = sbx.commands.run(server, background=True, timeout=0)
        try:
            host = sbx.get_host(SERVER_PORT)
            eq(host, f"{SERVER_PORT}-{sbx.sandbox_id}.{self.domain}", "get_host(8000)")
            deadline = time.monotonic() + 20
            tries = 0
            last = ""
            while True:
                tries += 1
                try:
                    status, body = self.get(host)
                    if status == 200 and body == SERVER_BODY:
                        break
                    last = f"status {status} body {body[:300]!r}"
                except (OSError, http.client.HTTPException) as e:
                    last = describe(e)
                ensure(
                    time.monotonic() < deadline,
                    f"GET / on {self.fuse_addr} with Host: {host} did not answer 200 {SERVER_BODY!r} "
                    f"within 20s ({tries} tries); last: {last}",
                )
                time.sleep(0.5)
        finally:
            killed = sbx.commands.kill(h.pid)
            try:
                h.disconnect()
            except Exception:  # noqa: BLE001 - the stream may already be closed
                pass
        eq(killed, True, "commands.kill of the server")
        return f"host={host}, 200 {SERVER_BODY!r} after {tries} tries"

    # -- checks: timeout, info, list, connect --------------------------------------------

    def set_timeout_info(self) -> str:
        sbx = self.sandbox()
        eq(sbx.set_timeout(300), None, "set_timeout returns None")
        info = sbx.get_info()
        now = datetime.now(timezone.utc)
        ensure(isinstance(info, e2b.SandboxInfo), f"get_info returned {type(info).__name__}")
        eq(info.sandbox_id, sbx.sandbox_id, "sandbox_id")
        ensure(
            isinstance(info.end_at, datetime) and info.end_at.tzinfo is not None,
            f"end_at is not a timezone-aware datetime: {info.end_at!r}",
        )
        ensure(
            isinstance(info.started_at, datetime) and info.started_at.tzinfo is not None,
            f"started_at is not a timezone-aware datetime: {info.started_at!r}",
        )
        left = (info.end_at - now).total_seconds()
        ensure(250 <= left <= 350, f"end_at is {left:.0f}s from now after set_timeout(300), want 250..350s")
        ensure(
            now - timedelta(minutes=10) <= info.started_at <= now + timedelta(seconds=5),
            f"started_at {info.started_at.isoformat()} is not shortly before now {now.isoformat()}",
        )
        eq(info.state, SandboxState.RUNNING, "state")
        eq(info.metadata, self.metadata, "metadata")
        ensure(isinstance(info.template_id, str) and bool(info.template_id), f"template_id: {info.template_id!r}")
        ensure(
            self.template in (info.template_id, info.name),
            f"neither template_id {info.template_id!r} nor name {info.name!r} is the template {self.template!r}",
        )
        ensure(isinstance(info.cpu_count, int) and info.cpu_count > 0, f"cpu_count: {info.cpu_count!r}")
        ensure(isinstance(info.memory_mb, int) and info.memory_mb > 0, f"memory_mb: {info.memory_mb!r}")
        ensure(isinstance(info.envd_version, str) and bool(info.envd_version), f"envd_version: {info.envd_version!r}")
        return (
            f"end_at in {left:.0f}s, template_id={info.template_id!r} name={info.name!r} "
            f"cpu_count={info.cpu_count} memory_mb={info.memory_mb} envd_version={info.envd_version} "
            f"domain={info.sandbox_domain!r}"
        )

    def list_metadata(self) -> str:
        sbx = self.sandbox()
        items, pages = self.listed({"run": self.run_id})
        ids = [i.sandbox_id for i in items]
        ensure(sbx.sandbox_id in ids, f"Sandbox.list(metadata run={self.run_id}) lacks {sbx.sandbox_id}: {ids}")
        eq(len(ids), 1, "sandboxes listed for this run's metadata")
        item = items[0]
        ensure(isinstance(item, e2b.SandboxInfo), f"list item is {type(item).__name__}")
        eq(item.metadata, self.metadata, "metadata of the listed sandbox")
        eq(item.state, SandboxState.RUNNING, "state of the listed sandbox")
        items2, _ = self.listed({"suite": "e2b-compat", "run": self.run_id})
        eq([i.sandbox_id for i in items2], [sbx.sandbox_id], "list by two metadata keys")
        return f"pages={pages} template_id={item.template_id!r} name={item.name!r}"

    def list_no_match(self) -> str:
        items, pages = self.listed({"run": f"no-such-run-{self.run_id}"})
        eq([i.sandbox_id for i in items], [], "sandboxes listed for a metadata value that matches nothing")
        return f"pages={pages}"

    def list_paging(self) -> str:
        sbx = self.sandbox()
        started = time.monotonic()
        other = Sandbox.create(self.template, timeout=60, metadata={**self.metadata, "role": "second"})
        self.created.append(other.sandbox_id)
        took = time.monotonic() - started
        try:
            paginator = Sandbox.list(query=SandboxQuery(metadata={"run": self.run_id}), limit=1)
            ensure(paginator.has_next, "a new paginator has has_next False")
            first = paginator.next_items()
            eq(len(first), 1, "first page of limit=1 over two sandboxes")
            ensure(paginator.has_next, "has_next is False after the first page of limit=1 over two sandboxes")
            ensure(bool(paginator.next_token), "no next_token after the first page of limit=1")
            rest, sizes = all_items(paginator, "Sandbox.list(limit=1)")
            ensure(all(n <= 1 for n in sizes), f"limit=1 gave pages of {sizes}")
            ids = [i.sandbox_id for i in first + rest]
            eq(len(ids), len(set(ids)), f"pages repeat sandboxes: {ids}")
            eq(sorted(ids), sorted([sbx.sandbox_id, other.sandbox_id]), "sandboxes over all pages")
        finally:
            killed = Sandbox.kill(other.sandbox_id)
        eq(killed, True, "Sandbox.kill of the second sandbox")
        return f"pages of {[1] + sizes}; second sandbox created in {took:.2f}s and killed"

    def connect(self) -> str:
        sbx = self.sandbox()
        sbx2 = Sandbox.connect(sbx.sandbox_id)
        ensure(isinstance(sbx2, Sandbox), f"Sandbox.connect returned {type(sbx2).__name__}")
        eq(sbx2.sandbox_id, sbx.sandbox_id, "sandbox_id of the connected sandbox")
        r = sbx2.commands.run("echo again")
        eq(r.stdout, "again\n", "stdout through the connected sandbox")
        eq(r.exit_code, 0, "exit_code")
        return "echo again"

    # -- checks: pause, resume, kill ------------------------------------------------------

    def pause(self) -> str:
        sbx = self.sandbox()
        info = sbx.files.write(KEEP, "kept")
        ensure(info.path.endswith("keep.txt"), f"WriteInfo.path: {info.path!r}")
        started = time.monotonic()
        eq(sbx.pause(), True, "pause of a running sandbox")
        took = time.monotonic() - started
        eq(sbx.get_info().state, SandboxState.PAUSED, "get_info state after pause")
        items, _ = self.listed({"run": self.run_id})
        states = {i.sandbox_id: i.state for i in items}
        eq(states.get(sbx.sandbox_id), SandboxState.PAUSED, f"Sandbox.list state after pause ({states})")
        eq(sbx.pause(), False, "pause of a paused sandbox (already paused)")
        return f"paused in {took:.2f}s"

    def resume(self) -> str:
        sbx = self.sandbox()
        started = time.monotonic()
        sbx3 = Sandbox.connect(sbx.sandbox_id)
        self.timings["resume_s"] = time.monotonic() - started
        self.sbx3 = sbx3
        eq(sbx3.sandbox_id, sbx.sandbox_id, "sandbox_id of the resumed sandbox")
        eq(sbx3.get_info().state, SandboxState.RUNNING, "get_info state after connect")
        eq(sbx3.files.read(KEEP), "kept", "a file written before the pause")
        r = sbx3.commands.run("echo back; echo $FUSE_E2B_VAR")
        eq(r.stdout, "back\nfrom-create\n", "a command after resume")
        return f"resume {self.timings['resume_s']:.2f}s"

    def kill(self) -> str:
        sbx3 = self.need(self.sbx3, "the sandbox resumed by Sandbox.connect")
        sandbox_id = sbx3.sandbox_id
        eq(sbx3.kill(), True, "kill of a running sandbox")
        e = raises(lambda: Sandbox.get_info(sandbox_id), SandboxNotFoundException, "Sandbox.get_info after kill")
        ensure(isinstance(e, NotFoundException), "SandboxNotFoundException is not a NotFoundException")
        raises(lambda: Sandbox.connect(sandbox_id), SandboxNotFoundException, "Sandbox.connect after kill")
        eq(Sandbox.kill(sandbox_id), False, "Sandbox.kill of a killed sandbox")
        items, _ = self.listed({"run": self.run_id})
        eq([i.sandbox_id for i in items], [], "Sandbox.list of this run after every sandbox is killed")
        return f"then {type(e).__name__}: {e}"

    def pty(self) -> str:
        sbx = self.sandbox()
        out: list = []
        h = sbx.pty.create(e2b.PtySize(rows=24, cols=80))
        ensure(h.pid > 0, f"pty.create pid {h.pid}")
        sbx.pty.resize(h.pid, e2b.PtySize(rows=30, cols=100))
        sbx.pty.send_stdin(h.pid, b"stty size; echo pty-$((6*7)); exit\n")
        r = h.wait(on_pty=lambda d: out.append(bytes(d)))
        text = b"".join(out).decode(errors="replace")
        ensure("30 100" in text, f"the terminal's size after resize is not 30x100: {text!r}")
        ensure("pty-42" in text, f"the shell on the terminal did not run the input: {text!r}")
        eq(r.exit_code, 0, "exit code of the terminal's shell")
        return f"{len(text)} bytes of terminal output"

    def watch_sync(self) -> str:
        sbx = self.sandbox()
        sbx.files.make_dir(WATCHED)
        w = sbx.files.watch_dir(WATCHED, include_entry=True, allow_network_mounts=True)
        sbx.files.write(f"{WATCHED}/new.txt", "watched")
        time.sleep(0.3)
        sbx.files.remove(f"{WATCHED}/new.txt")
        seen: list = []
        entries: dict = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for e in w.get_new_events():
                seen.append((e.name, e.type))
                if e.entry is not None:
                    entries[(e.name, e.type)] = e.entry
            if ("new.txt", FilesystemEventType.REMOVE) in seen:
                break
            time.sleep(0.1)
        w.stop()
        created = entries.get(("new.txt", FilesystemEventType.CREATE))
        ensure(created is not None, f"the create event carries no entry (include_entry): {seen}")
        eq(created.path, f"{WATCHED}/new.txt", "path of the created entry")
        ensure(("new.txt", FilesystemEventType.CREATE) in seen, f"no create event: {seen}")
        ensure(("new.txt", FilesystemEventType.REMOVE) in seen, f"no remove event: {seen}")
        return f"events {[(n, t.value) for n, t in seen]}"

    def watch_async(self) -> str:
        import asyncio

        async def go() -> list:
            a = await e2b.AsyncSandbox.connect(self.sandbox().sandbox_id)
            await a.files.make_dir(f"{WATCHED}/deep")
            got: list = []
            h = await a.files.watch_dir(WATCHED, on_event=lambda e: got.append((e.name, e.type)), recursive=True)
            await a.files.write(f"{WATCHED}/deep/streamed.txt", "x")
            deadline = time.monotonic() + 10
            while ("deep/streamed.txt", FilesystemEventType.CREATE) not in got and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await h.stop()
            return got

        got = asyncio.run(go())
        ensure(
            ("deep/streamed.txt", FilesystemEventType.CREATE) in got,
            f"the streamed, recursive watch saw no create of deep/streamed.txt: {got}",
        )
        return f"events {[(n, t.value) for n, t in got]}"

    # -- order -----------------------------------------------------------------------------

    def all(self) -> int:
        s = self.step
        s("Sandbox.create (template, timeout, metadata, envs)", self.create)
        s("commands.run (stdout, stderr, callbacks, create envs)", self.first_command)
        s("commands.run (output streamed as produced)", self.streaming)
        s("commands.run (non-zero exit: CommandExitException)", self.exit_code)
        s("commands.run (envs, cwd)", self.envs_cwd)
        s("commands.run background, commands.list, commands.kill", self.background_kill)
        s("commands.run background stdin, send_stdin, stream_input, close_stdin", self.background_stdin)
        s("files.write, files.read (text)", self.files_text)
        s("files.write, files.read (300 KiB bytes)", self.files_bytes)
        s("files.list, files.exists", self.files_list_exists)
        s("files and commands share a root (E2B_SHARED_ROOT=1)", self.files_shared_root)
        s("files.make_dir, files.rename", self.files_dir_rename)
        s("files.get_info, files.remove (FileNotFoundException)", self.files_info_remove)
        s("pty.create, pty.resize, pty.send_stdin (a terminal)", self.pty)
        s("files.watch_dir (polled watcher)", self.watch_sync)
        s("AsyncSandbox files.watch_dir (streamed, recursive)", self.watch_async)
        s("get_host (HTTP server in the sandbox through Fuse)", self.get_host)
        s("set_timeout, get_info", self.set_timeout_info)
        s("Sandbox.list (metadata query)", self.list_metadata)
        s("Sandbox.list (metadata that matches nothing)", self.list_no_match)
        s("Sandbox.list (limit=1 paging over two sandboxes)", self.list_paging)
        s("Sandbox.connect (running sandbox)", self.connect)
        s("pause (state paused)", self.pause)
        s("Sandbox.connect (resumes a paused sandbox, file kept)", self.resume)
        s("kill (then SandboxNotFoundException, kill again False)", self.kill)
        self.print_timings()
        if self.failures:
            print(f"\n{len(self.failures)} checks failed, {self.passed} passed: {', '.join(self.failures)}")
            return 1
        skipped = f" ({self.skipped} skipped)" if self.skipped else ""
        print(f"e2b compat: {self.passed} checks passed{skipped}", flush=True)
        return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--template", default=os.environ.get("E2B_TEMPLATE") or "base")
    p.add_argument("--fuse-addr", default=os.environ.get("FUSE_ADDR", ""))
    p.add_argument("--domain", default=os.environ.get("E2B_DOMAIN", ""))
    p.add_argument(
        "--shared-root",
        action="store_true",
        default=os.environ.get("E2B_SHARED_ROOT", "") == "1",
        help="commands and files see the same root [E2B_SHARED_ROOT=1]",
    )
    p.add_argument(
        "--keep-going",
        action="store_true",
        default=any(
            os.environ.get(n, "") not in ("", "0") for n in ("E2B_COMPAT_KEEP_GOING", "FUSE_SDK_KEEP_GOING")
        ),
        help="run every check and report all failures [E2B_COMPAT_KEEP_GOING=1 or FUSE_SDK_KEEP_GOING=1]",
    )
    args = p.parse_args()
    # The SDK reads these itself; without them it would talk to E2B's cloud.
    missing = [n for n in ("E2B_API_URL", "E2B_API_KEY", "E2B_SANDBOX_URL") if not os.environ.get(n)]
    if not args.fuse_addr:
        missing.append("FUSE_ADDR (or --fuse-addr)")
    if not args.domain:
        missing.append("E2B_DOMAIN (or --domain)")
    if missing:
        p.error("missing: " + ", ".join(missing))
    # The SDK takes the domain from E2B_DOMAIN; --domain must agree with it.
    os.environ["E2B_DOMAIN"] = args.domain
    version = importlib.metadata.version("e2b")
    print(
        f"e2b {version} against {os.environ['E2B_API_URL']} (sandbox url {os.environ['E2B_SANDBOX_URL']}, "
        f"domain {args.domain}, fuse {args.fuse_addr}, template {args.template})",
        flush=True,
    )
    if version != E2B_SDK_VERSION:
        print(f"warning: written against e2b {E2B_SDK_VERSION}, running {version}", flush=True)
    run = Run(args)
    try:
        return run.all()
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
