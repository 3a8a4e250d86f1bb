#!/usr/bin/env python3
"""Compatibility of `fuse` with the published Python SDK of the original Go Fuse
(`folsom-fuse` 0.37.1 on PyPI, package `fuse`), method by method.

Calls every public method of `fuse.Client` (environments, snapshots, hosts, api_keys) and
the error predicates against a running `fuse`, and asserts what comes back: values and
shapes, not only "no exception". It registers the real host agent it is given itself,
pins environments to it, and deregisters it at the end, so the control plane must start
with no host. One line is printed per method checked; the first failed check ends the
run with exit code 1 and a message naming it (`--keep-going` runs on and reports every
failure, for diagnosis).

Only the standard library and the SDK are used. Arguments (or the environment variables
in brackets): --base-url [FUSE_BASE_URL], --token [FUSE_TOKEN] (the master token,
ORCH_AUTH_TOKEN of the server), --host-url [FUSE_HOST_URL] and --host-token
[FUSE_HOST_TOKEN] (a real fc-agent that has not been registered).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

import fuse
from fuse import (
    ApiError,
    Client,
    ComputerAction,
    CreateRequest,
    ExecRequest,
    ExposeSpec,
    ForkOptions,
    HealthcheckHttp,
    HealthcheckSpec,
    HostCapacity,
    MigrateOptions,
    RegisterHostRequest,
    SnapshotRequest,
    Spec,
)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
KEY_ID = re.compile(r"^ak_[0-9a-f]{16}$")

# Fields the contract requires on every environment's `spec` (issue 11, wire fidelity:
# the SDK's Spec model, all present with their zero value when unset, never null).
SPEC_FIELDS = [
    "cpus",
    "ram_mb",
    "storage_gb",
    "gpus",
    "region",
    "arch",
    "max_runtime_seconds",
    "idle_timeout_seconds",
    "image",
    "host_id",
    "labels",
    "huge_pages",
]
SNAPSHOT_FIELDS = [
    "id",
    "vm_id",
    "task_id",
    "tenant_id",
    "parent_snapshot_id",
    "mode",
    "state",
    "comment",
    "layer_key",
    "arch",
    "digest",
    "kind",
    "size_bytes",
    "last_error",
]
HOST_FIELDS = ["id", "url", "region", "state", "backend", "labels", "capacity", "allocated"]

# What `migrate` answers here: a cold migration needs another host (this test registers
# only one), so it is the SDK's documented 503 with the source running; live (pre-copy) migration
# is not built, a clear "not implemented".
MIGRATE_STATUS = 503
MIGRATE_CODE = "unavailable"
LIVE_MIGRATE_STATUS = 501
LIVE_MIGRATE_CODE = "unimplemented"


class CheckFailed(Exception):
    """One assertion of the contract that does not hold."""


def ensure(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def eq(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


def raises(fn: Callable[[], Any], what: str) -> ApiError:
    """Calls `fn`, which must raise an ApiError; returns it."""
    try:
        got = fn()
    except ApiError as e:
        return e
    raise CheckFailed(f"{what}: expected an ApiError, the call returned {got!r}")


def api_error(err: ApiError, status: int, code: str, what: str) -> None:
    ensure(
        err.status == status and err.code == code,
        f"{what}: got status={err.status} code={err.code!r} message={err.message!r}, "
        f"want status={status} code={code!r}",
    )
    ensure(bool(err.message), f"{what}: the error has no message")
    ensure(fuse.as_api_error(err) is err, f"{what}: as_api_error does not return the error")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Run:
    """The state of one run: clients, what was created, the checks done."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.base_url.rstrip("/")
        self.token = args.token
        self.host_url = args.host_url.rstrip("/")
        self.host_token = args.host_token
        self.keep_going = args.keep_going
        self.c = Client(self.base, self.token, timeout=120.0)
        self.tag = f"{os.getpid() % 100000}{int(time.time()) % 100000}"
        self.failures: list[str] = []
        self.passed = 0
        # Filled in as the run goes.
        self.host_id = f"sdk-h1-{self.tag}"
        self.ghost_id = f"sdk-h2-{self.tag}"
        self.probed: dict[str, Any] = {}
        self.env_a: Optional[fuse.EnvironmentInfo] = None
        self.env_b: Optional[fuse.EnvironmentInfo] = None
        self.fork: Optional[fuse.EnvironmentInfo] = None
        self.snaps: list[fuse.Snapshot] = []
        self.snaps_before: set[str] = set()
        self.layer = f"sdk-layer-{self.tag}"
        self.layer2 = f"sdk-layer2-{self.tag}"
        self.computer_reason = ""

    # -- plumbing ------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], Optional[str]]) -> None:
        """Runs one check; prints `ok <name>` (and what it saw) or `FAIL <name>: why`."""
        started = time.monotonic()
        try:
            note = fn()
        except CheckFailed as e:
            self.fail(name, str(e))
            return
        except ApiError as e:
            self.fail(name, f"unexpected {e} details={e.details} body={e.body[:2000]!r}")
            return
        except Exception as e:  # noqa: BLE001 - a parse error of the SDK is a finding
            self.fail(name, f"unexpected {type(e).__name__}: {e}\n{traceback.format_exc()}")
            return
        self.passed += 1
        took = time.monotonic() - started
        print(f"ok   {name} ({took:.2f}s){': ' + note if note else ''}", flush=True)

    def fail(self, name: str, why: str) -> None:
        print(f"FAIL {name}: {why}", flush=True)
        self.failures.append(name)
        if not self.keep_going:
            print(f"\n{self.passed} checks passed before the first failure ({name})", flush=True)
            self.cleanup()
            sys.exit(1)

    def live_here(self) -> list[str]:
        """This run's environments that are not destroyed or failed."""
        return [
            e.id
            for e in self.c.environments.list()
            if self.tag in e.task_id and not fuse.is_terminal_state(e.state)
        ]

    def cleanup(self) -> None:
        """Best effort: destroys this run's environments and deregisters its hosts."""
        try:
            for env_id in self.live_here():
                self.c.environments.destroy(env_id)
            deadline = time.monotonic() + 30
            while self.live_here() and time.monotonic() < deadline:
                time.sleep(0.2)
            for host in (self.host_id, self.ghost_id):
                try:
                    self.c.hosts.deregister(host)
                except ApiError:
                    pass
        except Exception as e:  # noqa: BLE001 - cleanup never hides the failure
            print(f"cleanup: {e}", flush=True)

    def raw(self, method: str, path: str, token: Optional[str] = None) -> tuple[int, Any]:
        """A request outside the SDK: status and parsed JSON body (None when not JSON)."""
        req = urllib.request.Request(self.base + path, method=method)
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    def raw_ok(self, path: str) -> Any:
        status, body = self.raw("GET", path)
        eq(status, 200, f"GET {path} status")
        return body

    def exec_shell(self, env_id: str, shell: str, client: Optional[Client] = None) -> fuse.ExecResult:
        return (client or self.c).environments.exec(env_id, ExecRequest(shell=shell, timeout_ms=20000))

    def need(self, value: Any, what: str) -> Any:
        ensure(value is not None, f"needs {what}, which an earlier check did not produce")
        return value

    # -- checks ----------------------------------------------------------------------------

    def version(self) -> str:
        body = self.raw_ok("/v1/version")
        ensure(isinstance(body, dict), f"/v1/version is not a JSON object: {body!r}")
        for k in ("version", "commit", "api"):
            ensure(isinstance(body.get(k), str), f"/v1/version field {k!r} is not a string: {body!r}")
        ensure(bool(body["version"]), f"/v1/version has an empty version: {body!r}")
        ensure(bool(body["api"]), f"/v1/version has an empty api: {body!r}")
        return json.dumps(body)

    def unauthorized(self) -> str:
        for token in ("", "wrong-token-0123456789abcdef"):
            bad = Client(self.base, token)
            err = raises(lambda: bad.environments.list(), f"environments.list with token {token!r}")
            api_error(err, 401, fuse.CODE_UNAUTHORIZED, f"token {token!r}")
            ensure(fuse.is_unauthorized(err), "is_unauthorized is false for a 401")
            ensure(not fuse.is_not_found(err), "is_not_found is true for a 401")
            try:
                raise RuntimeError("wrapped") from err
            except RuntimeError as wrapped:
                ensure(fuse.as_api_error(wrapped) is err, "as_api_error does not walk the cause chain")
                ensure(fuse.is_unauthorized(wrapped), "is_unauthorized does not walk the cause chain")
            ensure(fuse.as_api_error(ValueError("x")) is None, "as_api_error of a non-API error")
            bad.close()
        return "no token and a wrong token: 401 unauthorized"

    def host_register(self) -> str:
        status, health = self.raw_agent("/healthz")
        eq(status, 200, "the host agent's /healthz")
        self.probed = health["capacity"]
        cap = HostCapacity(
            # One field declared above what the host reports: a registration warning.
            cpus=int(self.probed["cpus"]) + 32,
            ram_mb=int(self.probed["ram_mb"]),
            storage_gb=int(self.probed["storage_gb"]),
            vm_count=int(self.probed["vm_count"]),
            arch="amd64",
        )
        labels = {"tier": "sdk", "zone": "a"}
        h = self.c.hosts.register(
            RegisterHostRequest(
                id=self.host_id,
                url=self.host_url,
                token=self.host_token,
                region="lab",
                backend="process",
                labels=labels,
                capacity=cap,
            )
        )
        eq(h.id, self.host_id, "id")
        eq(h.url, self.host_url, "url")
        eq(h.region, "lab", "region")
        eq(h.state, "active", "state")
        eq(h.labels, labels, "labels")
        eq(h.backend, "process", "backend")
        eq(h.capacity.arch, "amd64", "capacity.arch")
        eq(h.allocated.vm_count, 0, "allocated.vm_count")
        ensure(h.created_at is not None and h.updated_at is not None, "created_at/updated_at missing")
        ensure(
            any(isinstance(w, str) and "cpu" in w.lower() for w in h.warnings),
            f"no warning names the cpus declared above the host's /healthz "
            f"({cap.cpus} > {self.probed['cpus']}): warnings={h.warnings!r}",
        )
        return f"warnings={h.warnings!r}"

    def raw_agent(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.host_url + path)
        req.add_header("Authorization", f"Bearer {self.host_token}")
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())

    def host_register_unreachable(self) -> str:
        url = f"http://127.0.0.1:{closed_port()}"
        h = self.c.hosts.register(
            RegisterHostRequest(
                id=self.ghost_id,
                url=url,
                token="ghost-token-0123456789",
                capacity=HostCapacity(cpus=2, ram_mb=2048, storage_gb=10, vm_count=2),
            )
        )
        eq(h.id, self.ghost_id, "id")
        eq(h.state, "unreachable", "state of a host that does not answer")
        ensure(bool(h.warnings), "no warning for a host that did not answer at registration")
        eq(h.capacity.cpus, 2, "declared capacity kept")
        eq(h.labels, {}, "labels when none were given")
        return f"warnings={h.warnings!r}"

    def host_get(self) -> str:
        h = self.c.hosts.get(self.host_id)
        eq(h.id, self.host_id, "id")
        eq(h.labels, {"tier": "sdk", "zone": "a"}, "labels")
        eq(h.backend, "process", "backend")
        eq(h.capacity.arch, "amd64", "capacity.arch")
        eq(h.warnings, [], "warnings outside the registration answer")
        raw = self.raw_ok(f"/v1/hosts/{self.host_id}")
        for k in HOST_FIELDS:
            ensure(k in raw and raw[k] is not None, f"host field {k!r} missing or null: {raw!r}")
        # The declared cpus are above what the host reports: the poll caps them.
        deadline = time.monotonic() + 15
        while True:
            h = self.c.hosts.get(self.host_id)
            if h.capacity.cpus == int(self.probed["cpus"]):
                break
            ensure(
                time.monotonic() < deadline,
                f"capacity.cpus is {h.capacity.cpus}, not capped at the {self.probed['cpus']} "
                "the host's /healthz reports",
            )
            time.sleep(0.5)
        err = raises(lambda: self.c.hosts.get(f"sdk-missing-{self.tag}"), "get of a missing host")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "missing host")
        ensure(fuse.is_not_found(err), "is_not_found is false for a missing host")
        return f"capacity={h.capacity.model_dump(exclude_defaults=True)}"

    def host_list(self) -> str:
        ids = [h.id for h in self.c.hosts.list()]
        for want in (self.host_id, self.ghost_id):
            ensure(want in ids, f"hosts.list lacks {want}: {ids}")
        eq(len(ids), len(set(ids)), "hosts.list has no duplicates")
        return f"{len(ids)} hosts"

    def host_list_page(self) -> str:
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            page = self.c.hosts.list_page(limit=1, cursor=cursor)
            pages += 1
            ensure(len(page.hosts) <= 1, f"limit=1 gave {len(page.hosts)} hosts")
            seen.extend(h.id for h in page.hosts)
            if pages == 1:
                ensure(bool(page.next_cursor), "the first page of limit=1 over 2+ hosts has no next_cursor")
            if not page.next_cursor:
                break
            cursor = page.next_cursor
            ensure(pages < 50, "paging does not end")
        eq(len(seen), len(set(seen)), f"pages repeat hosts: {seen}")
        for want in (self.host_id, self.ghost_id):
            ensure(want in seen, f"paging never returned {want}: {seen}")
        return f"{pages} pages of 1"

    def env_create(self) -> str:
        req = CreateRequest(
            task_id=f"sdk-a-{self.tag}",
            spec=Spec(
                cpus=1,
                ram_mb=256,
                storage_gb=1,
                region="lab",
                arch="amd64",
                max_runtime_seconds=3600,
                idle_timeout_seconds=3600,
                host_id=self.host_id,
                labels={"tier": "sdk"},
                huge_pages=False,
            ),
            files={"/data/hello.txt": b64("hello from the sdk\n")},
            secrets={"SDK_SECRET": "s3cret"},
            startup_script="echo ready > ready.txt",
            expose=[ExposeSpec(port=8080, as_="web")],
            healthcheck=HealthcheckSpec(
                exec=["sh", "-c", "test -f ready.txt"],
                interval_seconds=1,
                timeout_seconds=1,
                retries=2,
            ),
        )
        e = self.c.environments.create(req)
        self.env_a = e
        eq(e.state, fuse.STATE_RUNNING, "state")
        eq(e.task_id, req.task_id, "task_id")
        ensure(bool(e.id), "empty id")
        eq(e.host_id, self.host_id, "host_id (pinned)")
        eq(e.error, "", "error")
        ensure(e.created_at is not None and e.updated_at is not None, "created_at/updated_at missing")
        s = e.spec
        eq((s.cpus, s.ram_mb, s.storage_gb), (1, 256, 1), "spec cpus/ram_mb/storage_gb")
        eq(s.region, "lab", "spec.region")
        eq(s.arch, "amd64", "spec.arch")
        eq(s.max_runtime_seconds, 3600, "spec.max_runtime_seconds")
        eq(s.idle_timeout_seconds, 3600, "spec.idle_timeout_seconds")
        eq(s.host_id, self.host_id, "spec.host_id")
        eq(s.labels, {"tier": "sdk"}, "spec.labels")
        eq(s.huge_pages, False, "spec.huge_pages")
        eq(s.gpus, 0, "spec.gpus")
        eq(len(e.endpoints), 1, f"endpoints: {e.endpoints!r}")
        ep = e.endpoints[0]
        eq((ep.as_, ep.port, ep.protocol), ("web", 8080, "tcp"), "endpoint as/port/protocol")
        ensure(bool(ep.url), f"endpoint url is empty: {ep!r}")
        ensure(e.health is not None, "no health although a healthcheck was given")
        eq(e.health.state, fuse.HEALTH_PASSING, f"health.state ({e.health!r})")
        eq(e.health.failures, 0, "health.failures while passing")
        ensure(e.egress is not None, "no egress")
        eq(e.egress.mode, "direct", "egress.mode")
        raw = self.raw_ok(f"/v1/environments/{e.id}")
        self.spec_fields(raw)
        return f"{e.id} on {e.host_id}, endpoint {ep.url}"

    def spec_fields(self, raw: Any) -> None:
        spec = raw.get("spec")
        ensure(isinstance(spec, dict), f"spec is not an object: {raw!r}")
        missing = [k for k in SPEC_FIELDS if k not in spec]
        ensure(not missing, f"spec lacks {missing}: {spec!r}")
        nulls = [k for k, v in spec.items() if v is None]
        ensure(not nulls, f"spec fields are null: {nulls}: {spec!r}")
        ensure(isinstance(raw.get("endpoints"), list), f"endpoints is not a list: {raw!r}")

    def env_create_plain(self) -> str:
        e = self.c.environments.create(CreateRequest(task_id=f"sdk-b-{self.tag}"))
        self.env_b = e
        eq(e.state, fuse.STATE_RUNNING, "state")
        eq(e.host_id, self.host_id, "host_id (the only schedulable host)")
        eq(e.endpoints, [], "endpoints without expose")
        ensure(e.health is None, f"health without a healthcheck: {e.health!r}")
        ensure(e.egress is not None and e.egress.mode == "direct", f"egress: {e.egress!r}")
        self.spec_fields(self.raw_ok(f"/v1/environments/{e.id}"))
        return e.id

    def env_create_invalid_healthcheck(self) -> str:
        task = f"sdk-hc-{self.tag}"
        req = CreateRequest(
            task_id=task,
            healthcheck=HealthcheckSpec(exec=["true"], http=HealthcheckHttp(port=8080, path="/")),
        )
        err = raises(lambda: self.c.environments.create(req), "http and exec together")
        api_error(err, 400, fuse.CODE_INVALID_ARGUMENT, "http and exec together")
        ensure(fuse.is_invalid_argument(err), "is_invalid_argument is false for a 400")
        ids = [e.id for e in self.c.environments.list(task_id=task)]
        eq(ids, [], "environments of a refused request")
        return err.message

    def env_create_unplaceable(self) -> str:
        notes = []
        for what, spec, word in (
            ("arch arm64 with only amd64 hosts", Spec(arch="arm64"), "arch"),
            ("a label no host has", Spec(labels={"tier": "nowhere"}), "label"),
        ):
            req = CreateRequest(task_id=f"sdk-np-{word}-{self.tag}", spec=spec)
            err = raises(lambda: self.c.environments.create(req), what)
            api_error(err, 503, fuse.CODE_UNAVAILABLE, what)
            ensure(fuse.is_unavailable(err), f"is_unavailable is false for {what}")
            ensure(word in err.message.lower(), f"the 503 for {what} does not name the reason: {err.message!r}")
            notes.append(err.message)
        return " | ".join(notes)

    def env_get(self) -> str:
        a = self.need(self.env_a, "environment A")
        e = self.c.environments.get(a.id)
        eq(e.id, a.id, "id")
        eq(e.state, fuse.STATE_RUNNING, "state")
        eq(e.host_id, a.host_id, "host_id")
        eq(e.spec, a.spec, "spec")
        eq([x.model_dump() for x in e.endpoints], [x.model_dump() for x in a.endpoints], "endpoints")
        ensure(e.health is not None and e.health.state == fuse.HEALTH_PASSING, f"health: {e.health!r}")
        err = raises(lambda: self.c.environments.get(f"fuse-sdk-missing-{self.tag}"), "get of a missing id")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "missing environment")
        ensure(fuse.is_not_found(err), "is_not_found is false for a missing environment")
        return a.id

    def env_list(self) -> str:
        a, b = self.need(self.env_a, "environment A"), self.need(self.env_b, "environment B")
        ids = [e.id for e in self.c.environments.list()]
        ensure(a.id in ids and b.id in ids, f"list lacks A or B: {ids}")
        eq([e.id for e in self.c.environments.list(task_id=a.task_id)], [a.id], "list(task_id=A)")
        on_host = [e.id for e in self.c.environments.list(host_id=self.host_id)]
        ensure(a.id in on_host and b.id in on_host, f"list(host_id) lacks A or B: {on_host}")
        running = self.c.environments.list(state=fuse.STATE_RUNNING)
        ensure(all(e.state == fuse.STATE_RUNNING for e in running), "list(state=running) has other states")
        ensure(a.id in [e.id for e in running], "list(state=running) lacks A")
        return f"{len(ids)} environments"

    def env_list_page(self) -> str:
        seen: list[str] = []
        cursor, pages = "", 0
        while True:
            page = self.c.environments.list_page(host_id=self.host_id, limit=1, cursor=cursor)
            pages += 1
            ensure(len(page.environments) <= 1, f"limit=1 gave {len(page.environments)}")
            seen.extend(e.id for e in page.environments)
            if pages == 1:
                ensure(bool(page.next_cursor), "limit=1 over 2 environments has no next_cursor")
            if not page.next_cursor:
                break
            cursor = page.next_cursor
            ensure(pages < 50, "paging does not end")
        eq(len(seen), len(set(seen)), f"pages repeat environments: {seen}")
        a, b = self.need(self.env_a, "A"), self.need(self.env_b, "B")
        ensure(a.id in seen and b.id in seen, f"paging lacks A or B: {seen}")
        return f"{pages} pages of 1"

    def env_exec(self) -> str:
        a = self.need(self.env_a, "environment A")
        r = self.c.environments.exec(a.id, ExecRequest(cmd=["echo", "hello"]))
        eq((r.exit_code, r.stdout, r.stderr), (0, "hello\n", ""), "echo hello")
        r = self.exec_shell(a.id, "cat data/hello.txt; cat ready.txt")
        eq((r.exit_code, r.stdout), (0, "hello from the sdk\nready\n"), "the request's file and startup script")
        r = self.exec_shell(a.id, "echo out; echo err >&2; exit 3")
        eq((r.exit_code, r.stdout, r.stderr), (3, "out\n", "err\n"), "a failing command is a result, not an error")
        err = raises(
            lambda: self.c.environments.exec(f"fuse-sdk-missing-{self.tag}", ExecRequest(cmd=["true"])),
            "exec in a missing environment",
        )
        api_error(err, 404, fuse.CODE_NOT_FOUND, "exec in a missing environment")
        return "cmd, shell, exit 3"

    def env_fork(self) -> str:
        a = self.need(self.env_a, "environment A")
        r = self.exec_shell(a.id, "echo forked-content > fork.txt")
        eq(r.exit_code, 0, "writing the file to fork")
        f = self.c.environments.fork(a.id, ForkOptions(comment="sdk fork"))
        self.fork = f
        ensure(bool(f.id) and f.id != a.id, f"the fork's id {f.id!r} is not new (source {a.id})")
        eq(f.state, fuse.STATE_RUNNING, "the fork's state")
        eq(f.host_id, a.host_id, "the fork's host (the source's)")
        ensure(f.created_at is not None, "the fork has no created_at")
        r = self.exec_shell(f.id, "cat fork.txt")
        eq((r.exit_code, r.stdout), (0, "forked-content\n"), "the source's file in the fork")
        # Their disks are separate from here on.
        eq(self.exec_shell(f.id, "echo only-in-fork > fork.txt").exit_code, 0, "writing in the fork")
        eq(self.exec_shell(a.id, "cat fork.txt").stdout, "forked-content\n", "the source after a write in the fork")
        eq(self.c.environments.get(a.id).state, fuse.STATE_RUNNING, "the source after the fork")
        err = raises(lambda: self.c.environments.fork(f"fuse-sdk-missing-{self.tag}"), "fork of a missing id")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "fork of a missing environment")
        return f"{a.id} -> {f.id}"

    def env_migrate(self) -> str:
        a = self.need(self.env_a, "environment A")
        live = raises(lambda: self.c.environments.migrate(a.id, MigrateOptions(live=True)), "live migrate")
        api_error(live, LIVE_MIGRATE_STATUS, LIVE_MIGRATE_CODE, "live migrate")
        err = raises(lambda: self.c.environments.migrate(a.id, MigrateOptions()), "migrate")
        api_error(err, MIGRATE_STATUS, MIGRATE_CODE, "migrate")
        eq(self.c.environments.get(a.id).state, fuse.STATE_RUNNING, "the source after a refused migrate")
        return f"{err.status} {err.code}: {err.message}"

    def env_computer(self) -> str:
        a = self.need(self.env_a, "environment A")
        err = raises(lambda: self.c.environments.computer(a.id, ComputerAction(action="screenshot")), "computer")
        api_error(err, 503, fuse.CODE_UNAVAILABLE, "computer")
        ensure(fuse.is_unavailable(err), "is_unavailable is false for computer")
        self.computer_reason = err.message
        return err.message

    def env_computer_display(self) -> str:
        a = self.need(self.env_a, "environment A")
        err = raises(lambda: self.c.environments.computer_display(a.id), "computer_display")
        api_error(err, 503, fuse.CODE_UNAVAILABLE, "computer_display")
        ensure(fuse.is_unavailable(err), "is_unavailable is false for computer_display")
        return err.message

    def env_computer_tool_result(self) -> str:
        a = self.need(self.env_a, "environment A")
        r = self.c.environments.computer_tool_result(a.id, {"action": "left_click", "coordinate": [10, 20]})
        ensure(r.is_error, f"is_error is false: {r!r}")
        eq(len(r.content), 1, f"content blocks: {r.content!r}")
        eq(r.content[0].get("type"), "text", "content type")
        text = r.content[0].get("text", "")
        ensure(bool(text) and text != "the computer action failed", f"the content carries no reason: {text!r}")
        if self.computer_reason:
            eq(text, self.computer_reason, "the reason is the server's message")
        r = self.c.environments.computer_tool_result(a.id, {})
        ensure(r.is_error, "no action is an error")
        return text

    def snapshot_create(self) -> str:
        a = self.need(self.env_a, "environment A")
        # The fork took one of A already (a fork starts from a snapshot of its source).
        self.snaps_before = {s.id for s in self.c.snapshots.list(vm_id=a.id)}
        made = []
        for comment, layer in (("s1", self.layer), ("s2", self.layer), ("s3", self.layer2)):
            s = self.c.snapshots.create(
                a.id,
                SnapshotRequest(
                    comment=comment,
                    layer_key=layer,
                    metadata={"sdk": comment},
                    retention_seconds=3600,
                ),
            )
            made.append(s)
            ensure(s.id != "", "empty snapshot id")
            eq(s.vm_id, a.id, "vm_id")
            eq(s.task_id, a.task_id, "task_id")
            eq(s.state, "ready", "state")
            eq(s.comment, comment, "comment")
            eq(s.kind, "disk", "kind")
            eq(s.parent_snapshot_id, "", "parent_snapshot_id")
            eq(s.last_error, "", "last_error")
            eq(s.layer_key, layer, "layer_key")
            eq(s.arch, "amd64", "arch (of the host that took it)")
            ensure(bool(HEX64.match(s.digest)), f"digest is not 64 hex (sha256): {s.digest!r}")
            ensure(isinstance(s.tenant_id, str), "tenant_id")
            ensure(s.size_bytes > 0, f"size_bytes {s.size_bytes}")
            ensure(s.created_at is not None, "created_at")
            ensure(s.retention_until is not None, "retention_until with retention_seconds")
            raw = self.raw_ok(f"/v1/snapshots/{s.id}")
            missing = [k for k in SNAPSHOT_FIELDS if k not in raw or raw[k] is None]
            ensure(not missing, f"snapshot fields missing or null: {missing}: {raw!r}")
            # A clock tick apart, so "newest" is well defined.
            time.sleep(0.01)
        self.snaps = made
        ensure(len({s.id for s in made}) == 3, "snapshot ids repeat")
        err = raises(lambda: self.c.snapshots.create(f"fuse-sdk-missing-{self.tag}"), "snapshot of a missing id")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "snapshot of a missing environment")
        return ", ".join(f"{s.id} digest={s.digest[:12]}…" for s in made)

    def snapshot_get(self) -> str:
        s1 = self.need(self.snaps[0] if self.snaps else None, "snapshots")
        g = self.c.snapshots.get(s1.id)
        eq(g.model_dump(), s1.model_dump(), "get equals the create answer")
        err = raises(lambda: self.c.snapshots.get(f"snap-missing-{self.tag}"), "get of a missing snapshot")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "missing snapshot")
        return s1.id

    def snapshot_list(self) -> str:
        a = self.need(self.env_a, "environment A")
        s1, s2, s3 = self.need(self.snaps if len(self.snaps) == 3 else None, "3 snapshots")
        ids = {s.id for s in self.c.snapshots.list(vm_id=a.id)}
        eq(ids, self.snaps_before | {s1.id, s2.id, s3.id}, "list(vm_id=A)")
        eq({s.id for s in self.c.snapshots.list(task_id=a.task_id)}, ids, "list(task_id=A)")
        eq({s.id for s in self.c.snapshots.list(layer_key=self.layer)}, {s1.id, s2.id}, "list(layer_key)")
        eq(
            {s.id for s in self.c.snapshots.list(layer_key=self.layer, arch="amd64")},
            {s1.id, s2.id},
            "list(layer_key, arch=amd64)",
        )
        eq([s.id for s in self.c.snapshots.list(layer_key=self.layer, arch="arm64")], [], "list(arch=arm64)")
        eq({s.id for s in self.c.snapshots.list(vm_id=a.id, state="ready")}, ids, "list(state=ready)")
        if s1.tenant_id:
            ensure(s1.id in {s.id for s in self.c.snapshots.list(tenant_id=s1.tenant_id)}, "list(tenant_id)")
        eq(
            [s.id for s in self.c.snapshots.list(tenant_id=f"sdk-no-tenant-{self.tag}")],
            [],
            "list(tenant_id=another tenant)",
        )
        return f"{len(ids)} on A"

    def snapshot_list_page(self) -> str:
        a = self.need(self.env_a, "environment A")
        want = self.snaps_before | {s.id for s in self.snaps}
        got: list[str] = []
        sizes: list[int] = []
        cursor = ""
        while True:
            page = self.c.snapshots.list_page(vm_id=a.id, limit=2, cursor=cursor)
            sizes.append(len(page.snapshots))
            got.extend(s.id for s in page.snapshots)
            if not page.next_cursor:
                break
            cursor = page.next_cursor
            ensure(len(sizes) < 50, "paging does not end")
        pages = -(-len(want) // 2)
        eq(len(sizes), pages, f"pages of limit=2 over {len(want)} (sizes {sizes})")
        ensure(all(n == 2 for n in sizes[:-1]) and 1 <= sizes[-1] <= 2, f"page sizes {sizes}")
        eq(len(got), len(set(got)), f"pages repeat snapshots: {got}")
        eq(set(got), want, "the pages together")
        lk = self.c.snapshots.list_page(layer_key=self.layer, limit=1)
        eq(len(lk.snapshots), 1, "limit=1 with a layer_key filter")
        ensure(bool(lk.next_cursor), "limit=1 over 2 layer snapshots has no next_cursor")
        lk2 = self.c.snapshots.list_page(layer_key=self.layer, limit=1, cursor=lk.next_cursor)
        eq(
            {lk.snapshots[0].id, lk2.snapshots[0].id} if lk2.snapshots else set(),
            {s.id for s in self.snaps[:2]},
            "paging with a layer_key filter",
        )
        return " + ".join(map(str, sizes))

    def snapshot_resolve(self) -> str:
        s1, s2, s3 = self.need(self.snaps if len(self.snaps) == 3 else None, "3 snapshots")
        hit = self.c.snapshots.resolve(self.layer, "amd64")
        ensure(hit is not None, "resolve of a layer with two ready snapshots missed")
        eq(hit.id, s2.id, "resolve returns the newest ready snapshot")
        eq(hit.layer_key, self.layer, "layer_key")
        hit3 = self.c.snapshots.resolve(self.layer2, "amd64")
        ensure(hit3 is not None and hit3.id == s3.id, f"resolve of the second layer: {hit3!r}")
        eq(self.c.snapshots.resolve(self.layer, "arm64"), None, "resolve for another arch")
        eq(self.c.snapshots.resolve(f"sdk-no-layer-{self.tag}", "amd64"), None, "resolve of an unknown layer")
        status, body = self.raw("GET", f"/v1/snapshots/resolve?layer_key=sdk-no-layer-{self.tag}&arch=amd64")
        eq(status, 200, "a resolve miss is a 200")
        eq(body.get("found") if isinstance(body, dict) else body, False, f"a miss is found:false ({body!r})")
        return f"{self.layer} -> {hit.id}"

    def env_fork_from_snapshot(self) -> str:
        a = self.need(self.env_a, "environment A")
        s1 = self.need(self.snaps[0] if self.snaps else None, "snapshots")
        eq(self.exec_shell(a.id, "echo after-s1 > fork.txt").exit_code, 0, "writing after s1")
        before = {s.id for s in self.c.snapshots.list(vm_id=a.id)}
        f = self.c.environments.fork(a.id, ForkOptions(reuse_snapshot_id=s1.id, comment="from s1"))
        ensure(f.id not in (a.id, self.fork.id if self.fork else ""), f"the fork's id {f.id!r} is not new")
        eq(f.state, fuse.STATE_RUNNING, "state")
        eq(f.host_id, a.host_id, "host (the source's)")
        eq(self.exec_shell(f.id, "cat fork.txt").stdout, "forked-content\n", "the fork has s1's disk")
        after = {s.id for s in self.c.snapshots.list(vm_id=a.id)}
        eq(after, before, "snapshots of the source (a given snapshot is reused, none is taken)")
        return f"{s1.id} -> {f.id}"

    def snapshot_restore(self) -> str:
        a = self.need(self.env_a, "environment A")
        s1 = self.need(self.snaps[0] if self.snaps else None, "snapshots")
        eq(self.exec_shell(a.id, "echo changed > fork.txt").exit_code, 0, "writing after the snapshot")
        got = self.c.snapshots.restore(s1.id)
        eq(got, None, "restore returns None")
        deadline = time.monotonic() + 30
        while self.c.snapshots.get(s1.id).state != "ready":
            ensure(time.monotonic() < deadline, "the snapshot never returned to ready after the restore")
            time.sleep(0.2)
        r = self.exec_shell(a.id, "cat fork.txt")
        eq(r.stdout, "forked-content\n", "the file as it was when the snapshot was taken")
        eq(self.c.environments.get(a.id).state, fuse.STATE_RUNNING, "state after the restore")
        return s1.id

    def snapshot_delete(self) -> str:
        s3 = self.need(self.snaps[2] if len(self.snaps) == 3 else None, "3 snapshots")
        eq(self.c.snapshots.delete(s3.id), None, "delete returns None")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.c.snapshots.get(s3.id)
            except ApiError as e:
                api_error(e, 404, fuse.CODE_NOT_FOUND, "get of a deleted snapshot")
                break
            ensure(time.monotonic() < deadline, "the deleted snapshot is still there")
            time.sleep(0.2)
        eq(self.c.snapshots.resolve(self.layer2, "amd64"), None, "resolve after the layer's only snapshot went")
        ensure(s3.id not in {s.id for s in self.c.snapshots.list()}, "list after delete")
        return s3.id

    def api_keys(self) -> str:
        a = self.need(self.env_a, "environment A")
        label = f"sdk-key-{self.tag}"
        k = self.c.api_keys.create(label)
        ensure(bool(KEY_ID.match(k.id)), f"key id {k.id!r} is not ak_ + 16 hex")
        ensure(len(k.key) >= 16, f"the raw key is too short: {len(k.key)} characters")
        eq(k.label, label, "label")
        ensure(k.created_at is not None, "created_at")
        ensure(k.last_used_at is None and k.revoked_at is None, "a new key is unused and not revoked")
        with Client(self.base, k.key) as kc:
            self.with_key(a, k, kc, label)
        return f"{k.id}: list with the key, 403 for api_keys and exec, last_used_at, 401 once revoked"

    def with_key(self, a: fuse.EnvironmentInfo, k: fuse.CreatedAPIKey, kc: Client, label: str) -> None:
        ids = [e.id for e in kc.environments.list()]
        ensure(a.id in ids, f"the key client's list lacks A: {ids}")
        eq(kc.environments.get(a.id).id, a.id, "the key client's get")
        err = raises(lambda: kc.api_keys.list(), "api_keys.list with an API key")
        api_error(err, 403, "forbidden", "api_keys.list with an API key")
        err = raises(lambda: kc.api_keys.create("nested"), "api_keys.create with an API key")
        api_error(err, 403, "forbidden", "api_keys.create with an API key")
        err = raises(lambda: kc.environments.exec(a.id, ExecRequest(cmd=["true"])), "exec with an API key")
        api_error(err, 403, "forbidden", "exec with an API key")
        listed = {x.id: x for x in self.c.api_keys.list()}
        ensure(k.id in listed, f"api_keys.list lacks {k.id}: {list(listed)}")
        eq(listed[k.id].label, label, "listed label")
        ensure(listed[k.id].last_used_at is not None, "last_used_at is not set after the key was used")
        ensure(listed[k.id].revoked_at is None, "revoked_at before revoke")
        status, body = self.raw("GET", "/v1/api-keys")
        eq(status, 200, "GET /v1/api-keys")
        ensure(k.key not in json.dumps(body), "the raw key is listed")
        eq(self.c.api_keys.revoke(k.id), None, "revoke returns None")
        err = raises(lambda: kc.environments.list(), "a revoked key")
        api_error(err, 401, fuse.CODE_UNAUTHORIZED, "a revoked key")
        ensure(fuse.is_unauthorized(err), "is_unauthorized is false for a revoked key")
        after = {x.id: x for x in self.c.api_keys.list()}
        ensure(
            k.id not in after or after[k.id].revoked_at is not None,
            "a revoked key is listed without revoked_at",
        )
        err = raises(lambda: self.c.api_keys.revoke(f"ak_{'0' * 16}"), "revoke of a missing key")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "revoke of a missing key")

    def env_rotate_token(self) -> str:
        a = self.need(self.env_a, "environment A")
        before = self.exec_shell(a.id, "cat fuse/token").stdout
        ensure(bool(before.strip()), "no token in the guest before rotation")
        eq(self.c.environments.rotate_token(a.id), None, "rotate_token returns None")
        after = self.exec_shell(a.id, "cat fuse/token").stdout
        ensure(bool(after.strip()) and after != before, "the guest's token did not change")
        return "guest token replaced"

    def env_drain(self) -> str:
        a = self.need(self.env_a, "environment A")
        e = self.c.environments.drain(a.id)
        eq(e.id, a.id, "id")
        eq(e.state, fuse.STATE_DRAINING, "state")
        eq(self.c.environments.get(a.id).state, fuse.STATE_DRAINING, "state read back")
        r = self.exec_shell(a.id, "echo still-here")
        eq(r.stdout, "still-here\n", "exec while draining")
        return a.id

    def env_events_destroy(self) -> str:
        a = self.need(self.env_a, "environment A")
        events: list[fuse.Event] = []
        opened = threading.Event()
        done = threading.Event()
        crash: list[BaseException] = []

        def follow() -> None:
            try:
                for ev in self.c.environments.events(a.id):
                    events.append(ev)
                    opened.set()
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                crash.append(e)
            finally:
                opened.set()
                done.set()

        t = threading.Thread(target=follow, daemon=True)
        t.start()
        ensure(opened.wait(30), "no event within 30 s of opening the stream")
        ensure(not crash, f"the event stream raised {crash!r}")
        eq(events[0].state, fuse.STATE_DRAINING, "the first event is the current state")
        eq(self.c.environments.destroy(a.id), None, "destroy returns None")
        ensure(done.wait(60), f"the event stream did not end after destroy; events: {[e.state for e in events]}")
        ensure(not crash, f"the event stream raised {crash!r}")
        errs = [e.err for e in events if e.err is not None]
        ensure(not errs, f"the stream ended with an error event: {errs!r}")
        states = [e.state for e in events]
        eq(states[-1], fuse.STATE_DESTROYED, f"the last event ({states})")
        ensure(fuse.STATE_DESTROYING in states, f"no destroying event: {states}")
        ensure(all(e.vm_id == a.id for e in events), "events of another environment")
        ensure(all(e.kind for e in events), "an event without a kind")
        ensure(all(e.updated_at is not None for e in events), "an event without updated_at")
        ensure(fuse.is_terminal_state(states[-1]), "is_terminal_state(destroyed)")
        eq(self.c.environments.destroy(a.id), None, "a repeated destroy")
        return " -> ".join(states)

    def env_get_destroyed(self) -> str:
        a = self.need(self.env_a, "environment A")
        err = raises(lambda: self.c.environments.get(a.id), "get of a destroyed environment")
        api_error(err, 404, fuse.CODE_NOT_FOUND, "get of a destroyed environment")
        ensure(fuse.is_not_found(err), "is_not_found is false for a destroyed environment")
        eq(err.details.get("state"), fuse.STATE_DESTROYED, f"details.state ({err.details})")
        ensure("error" in err.details, f"details lack error: {err.details}")
        ensure(
            err.details.get("destroyed_at", "") not in ("", "None"),
            f"details lack destroyed_at: {err.details}",
        )
        gone = self.c.environments.list(state=fuse.STATE_DESTROYED)
        match = [e for e in gone if e.id == a.id]
        eq(len(match), 1, "list(state=destroyed) lists the destroyed environment once")
        eq(match[0].state, fuse.STATE_DESTROYED, "its state")
        ensure(a.id not in [e.id for e in self.c.environments.list(state=fuse.STATE_RUNNING)], "still running")
        late = raises(lambda: self.c.environments.exec(a.id, ExecRequest(cmd=["true"])), "exec after destroy")
        ensure(late.status in (404, 409), f"exec after destroy: {late}")
        return f"details={err.details}"

    def host_cordon(self) -> str:
        eq(self.c.hosts.cordon(self.host_id), None, "cordon returns None")
        eq(self.c.hosts.get(self.host_id).state, "cordoned", "state after cordon")
        req = CreateRequest(task_id=f"sdk-cordoned-{self.tag}", spec=Spec(host_id=self.host_id))
        err = raises(lambda: self.c.environments.create(req), "create pinned to a cordoned host")
        api_error(err, 503, fuse.CODE_UNAVAILABLE, "create pinned to a cordoned host")
        b = self.need(self.env_b, "environment B")
        eq(self.c.environments.get(b.id).state, fuse.STATE_RUNNING, "a VM on a cordoned host keeps running")
        eq(self.exec_shell(b.id, "echo up").stdout, "up\n", "exec on a cordoned host")
        return err.message

    def host_uncordon(self) -> str:
        eq(self.c.hosts.uncordon(self.host_id), None, "uncordon returns None")
        eq(self.c.hosts.get(self.host_id).state, "active", "state after uncordon")
        return "active"

    def host_deregister(self) -> str:
        err = raises(lambda: self.c.hosts.deregister(self.host_id), "deregister with VMs on the host")
        api_error(err, 409, fuse.CODE_CONFLICT, "deregister with VMs on the host")
        ensure(fuse.is_conflict(err), "is_conflict is false for a 409")
        for env_id in self.live_here():
            eq(self.c.environments.destroy(env_id), None, f"destroy {env_id}")
        deadline = time.monotonic() + 60
        while True:
            live = [e.id for e in self.c.environments.list(host_id=self.host_id) if not fuse.is_terminal_state(e.state)]
            if not live and self.c.hosts.get(self.host_id).allocated.vm_count == 0:
                break
            ensure(time.monotonic() < deadline, f"environments still live on the host: {live}")
            time.sleep(0.2)
        eq(self.c.hosts.deregister(self.host_id), None, "deregister of an empty host")
        gone = raises(lambda: self.c.hosts.get(self.host_id), "get of a deregistered host")
        api_error(gone, 404, fuse.CODE_NOT_FOUND, "get of a deregistered host")
        eq(self.c.hosts.deregister(self.ghost_id), None, "deregister of the unreachable host")
        ids = [h.id for h in self.c.hosts.list()]
        ensure(self.host_id not in ids and self.ghost_id not in ids, f"deregistered hosts listed: {ids}")
        return f"409 first ({err.message})"

    # -- order -----------------------------------------------------------------------------

    def all(self) -> int:
        s = self.step
        s("GET /v1/version", self.version)
        s("errors: is_unauthorized (no token, wrong token)", self.unauthorized)
        s("hosts.register (labels, backend, capacity.arch, warnings)", self.host_register)
        s("hosts.register (unreachable host: accepted with a warning)", self.host_register_unreachable)
        s("hosts.get", self.host_get)
        s("hosts.list", self.host_list)
        s("hosts.list_page", self.host_list_page)
        s("environments.create (pin, labels, arch, expose, healthcheck)", self.env_create)
        s("environments.create (no options: zero values)", self.env_create_plain)
        s("environments.create (http and exec healthcheck: is_invalid_argument)", self.env_create_invalid_healthcheck)
        s("environments.create (unplaceable arch, labels: is_unavailable)", self.env_create_unplaceable)
        s("environments.get", self.env_get)
        s("environments.list", self.env_list)
        s("environments.list_page", self.env_list_page)
        s("environments.exec", self.env_exec)
        s("environments.fork", self.env_fork)
        s("environments.migrate", self.env_migrate)
        s("environments.computer", self.env_computer)
        s("environments.computer_display", self.env_computer_display)
        s("environments.computer_tool_result", self.env_computer_tool_result)
        s("snapshots.create", self.snapshot_create)
        s("snapshots.get", self.snapshot_get)
        s("snapshots.list", self.snapshot_list)
        s("snapshots.list_page", self.snapshot_list_page)
        s("snapshots.resolve", self.snapshot_resolve)
        s("environments.fork (reuse_snapshot_id)", self.env_fork_from_snapshot)
        s("snapshots.restore", self.snapshot_restore)
        s("snapshots.delete", self.snapshot_delete)
        s("api_keys.create, list, revoke", self.api_keys)
        s("environments.rotate_token", self.env_rotate_token)
        s("environments.drain", self.env_drain)
        s("environments.events, environments.destroy", self.env_events_destroy)
        s("environments.get after destroy (404 with details), list(state=destroyed)", self.env_get_destroyed)
        s("hosts.cordon", self.host_cordon)
        s("hosts.uncordon", self.host_uncordon)
        s("hosts.deregister (409 while VMs live, then works)", self.host_deregister)
        self.c.close()
        if self.failures:
            self.cleanup()
            print(f"\n{len(self.failures)} checks failed, {self.passed} passed: {', '.join(self.failures)}")
            return 1
        print(f"\nall {self.passed} checks passed (folsom-fuse {fuse.VERSION})")
        return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default=os.environ.get("FUSE_BASE_URL", ""))
    p.add_argument("--token", default=os.environ.get("FUSE_TOKEN", ""))
    p.add_argument("--host-url", default=os.environ.get("FUSE_HOST_URL", ""))
    p.add_argument("--host-token", default=os.environ.get("FUSE_HOST_TOKEN", ""))
    p.add_argument(
        "--keep-going",
        action="store_true",
        default=os.environ.get("FUSE_SDK_KEEP_GOING", "") not in ("", "0"),
        help="run every check and report all failures [FUSE_SDK_KEEP_GOING=1]",
    )
    args = p.parse_args()
    missing = [n for n in ("base_url", "token", "host_url", "host_token") if not getattr(args, n)]
    if missing:
        p.error("missing: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    print(f"folsom-fuse {fuse.VERSION} against {args.base_url}", flush=True)
    return Run(args).all()


if __name__ == "__main__":
    sys.exit(main())
