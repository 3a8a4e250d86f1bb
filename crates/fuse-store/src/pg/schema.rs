//! Embedded, versioned migrations, applied at start in one transaction under an advisory
//! lock (so two replicas starting together do not race) and recorded in
//! `schema_migrations`. Migrations are append-only: never edit one that has shipped.

/// `(version, name, sql)`, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial schema",
        r#"
CREATE TABLE hosts (
    id               text PRIMARY KEY,
    url              text NOT NULL,
    token_enc        bytea,
    region           text NOT NULL DEFAULT '',
    state            text NOT NULL,
    state_reason     text,
    cap_cpus         bigint NOT NULL,
    cap_ram_mb       bigint NOT NULL,
    cap_storage_gb   bigint NOT NULL,
    cap_vm_count     bigint NOT NULL,
    alloc_cpus       bigint NOT NULL DEFAULT 0 CHECK (alloc_cpus >= 0),
    alloc_ram_mb     bigint NOT NULL DEFAULT 0 CHECK (alloc_ram_mb >= 0),
    alloc_storage_gb bigint NOT NULL DEFAULT 0 CHECK (alloc_storage_gb >= 0),
    alloc_vm_count   bigint NOT NULL DEFAULT 0 CHECK (alloc_vm_count >= 0),
    last_seen        timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

CREATE TABLE tasks (
    task_id      text PRIMARY KEY,
    vm_id        text NOT NULL,
    request_hash text NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE TABLE vms (
    id            text PRIMARY KEY,
    task_id       text NOT NULL,
    state         text NOT NULL,
    generation    bigint NOT NULL,
    host_id       text,
    reserved      jsonb,
    url           text NOT NULL DEFAULT '',
    spec          jsonb NOT NULL,
    request_hash  text NOT NULL,
    agent         jsonb NOT NULL,
    error         text,
    restored_from text,
    owner         text NOT NULL DEFAULT '',
    secrets_enc   bytea,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    running_since timestamptz
);
CREATE INDEX vms_live_host_idx ON vms (host_id) WHERE state <> 'destroyed';
CREATE INDEX vms_state_idx ON vms (state);
CREATE INDEX vms_task_idx ON vms (task_id);

CREATE TABLE snapshots (
    id               text PRIMARY KEY,
    vm_id            text NOT NULL,
    task_id          text NOT NULL,
    host_id          text,
    parent_id        text REFERENCES snapshots (id),
    mode             text NOT NULL,
    state            text NOT NULL,
    comment          text NOT NULL DEFAULT '',
    size_bytes       bigint NOT NULL DEFAULT 0,
    host_snapshot_id text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    retention_until  timestamptz,
    last_error       text
);
CREATE INDEX snapshots_vm_idx ON snapshots (vm_id);
CREATE INDEX snapshots_parent_idx ON snapshots (parent_id);

CREATE TABLE events (
    seq         bigserial PRIMARY KEY,
    entity_kind text NOT NULL,
    entity_id   text NOT NULL,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_entity_idx ON events (entity_id, seq);

CREATE TABLE dead_letters (
    kind       text NOT NULL,
    entity_id  text NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, entity_id)
);
"#,
    ),
    (
        2,
        "store_meta: the encryption key check",
        // Facts about the store itself, by name. `key_check` is a fixed text sealed with
        // TOKEN_ENCRYPTION_KEY (see `keys.rs`).
        r#"
CREATE TABLE store_meta (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        3,
        "parity with the Go original: environment extras, host labels/backend/arch, snapshot \
         kind/layer/arch/digest/tenant/metadata, api keys",
        r#"
ALTER TABLE vms ADD COLUMN extras jsonb NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN backend text NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN arch text NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN labels jsonb NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN declared jsonb NOT NULL
    DEFAULT '{"cpus":0,"ram_mb":0,"storage_gb":0,"vm_count":0}';
ALTER TABLE snapshots ADD COLUMN tenant_id text NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN kind text NOT NULL DEFAULT 'disk';
ALTER TABLE snapshots ADD COLUMN layer_key text NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN arch text NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN digest text NOT NULL DEFAULT '';
ALTER TABLE snapshots ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
CREATE INDEX snapshots_layer_idx ON snapshots (layer_key, arch) WHERE layer_key <> '';

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    label        text NOT NULL DEFAULT '',
    key_hash     bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
"#,
    ),
    (
        4,
        "fast starts: templates, warm-pool and template lookups, snapshot bytes per host",
        // A template's snapshot cannot go while the template exists (foreign key); live
        // environments name their template and pool in `extras`.
        r#"
CREATE TABLE templates (
    name          text PRIMARY KEY,
    snapshot_id   text NOT NULL REFERENCES snapshots (id),
    source_vm_id  text,
    host_id       text NOT NULL,
    tenant_id     text NOT NULL DEFAULT '',
    spec          jsonb NOT NULL,
    pool_per_host bigint NOT NULL DEFAULT 0 CHECK (pool_per_host >= 0),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX templates_snapshot_idx ON templates (snapshot_id);
CREATE INDEX vms_template_idx ON vms ((extras->>'template')) WHERE extras ? 'template';
CREATE INDEX vms_pool_idx ON vms ((extras->>'pool')) WHERE extras ? 'pool';
CREATE INDEX snapshots_host_idx ON snapshots (host_id) WHERE state IN ('ready', 'creating');
"#,
    ),
];
