-- The mirror's tables. Every row carries `fetched_at` (when Attio's answer was in hand) so an
-- older fetch never overwrites a newer one, and `deleted_at` (set when Attio no longer has it).

CREATE TABLE records (
    object      text,
    object_id   uuid NOT NULL,
    record_id   uuid NOT NULL,
    "values"    jsonb NOT NULL DEFAULT '{}',
    web_url     text,
    created_at  timestamptz,
    fetched_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    merged_into uuid,
    PRIMARY KEY (object_id, record_id)
);
CREATE INDEX records_object ON records (object);

CREATE TABLE list_entries (
    list             text,
    list_id          uuid NOT NULL,
    entry_id         uuid NOT NULL,
    parent_object    text,
    parent_record_id uuid,
    entry_values     jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz,
    fetched_at       timestamptz NOT NULL,
    deleted_at       timestamptz,
    PRIMARY KEY (list_id, entry_id)
);
CREATE INDEX list_entries_parent_record ON list_entries (parent_record_id);

CREATE TABLE notes (
    note_id          uuid PRIMARY KEY,
    parent_object    text,
    parent_record_id uuid,
    title            text,
    created_by_id    uuid,
    created_at       timestamptz,
    data             jsonb,
    fetched_at       timestamptz NOT NULL,
    deleted_at       timestamptz
);
CREATE INDEX notes_parent_record ON notes (parent_record_id);

CREATE TABLE tasks (
    task_id      uuid PRIMARY KEY,
    content      text,
    deadline_at  timestamptz,
    is_completed boolean,
    created_at   timestamptz,
    data         jsonb,
    fetched_at   timestamptz NOT NULL,
    deleted_at   timestamptz
);

CREATE TABLE comments (
    comment_id       uuid PRIMARY KEY,
    thread_id        uuid,
    object_id        uuid,
    record_id        uuid,
    list_id          uuid,
    entry_id         uuid,
    author_id        uuid,
    content          text,
    resolved_at      timestamptz,
    created_at       timestamptz,
    data             jsonb,
    fetched_at       timestamptz NOT NULL,
    deleted_at       timestamptz
);
CREATE INDEX comments_record ON comments (record_id);

CREATE TABLE workspace_members (
    workspace_member_id uuid PRIMARY KEY,
    email_address       text,
    first_name          text,
    last_name           text,
    access_level        text,
    created_at          timestamptz,
    data                jsonb,
    fetched_at          timestamptz NOT NULL,
    deleted_at          timestamptz
);

CREATE TABLE events (
    id          text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz,
    event       jsonb
);

-- The schema Attio describes, from which the typed views are made.
CREATE TABLE objects (
    object_id     uuid PRIMARY KEY,
    api_slug      text,
    singular_noun text,
    plural_noun   text,
    data          jsonb,
    fetched_at    timestamptz NOT NULL
);

CREATE TABLE lists (
    list_id       uuid PRIMARY KEY,
    api_slug      text,
    name          text,
    parent_object text,
    data          jsonb,
    fetched_at    timestamptz NOT NULL,
    deleted_at    timestamptz
);

CREATE TABLE attributes (
    parent         text NOT NULL CHECK (parent IN ('object', 'list')),
    parent_id      uuid NOT NULL,
    attribute_id   uuid NOT NULL,
    api_slug       text NOT NULL,
    title          text,
    type           text,
    is_multiselect boolean NOT NULL DEFAULT false,
    is_archived    boolean NOT NULL DEFAULT false,
    data           jsonb,
    fetched_at     timestamptz NOT NULL,
    PRIMARY KEY (parent_id, attribute_id)
);

-- The views this mirror made, so that a renamed object or list drops its old view.
CREATE TABLE views (
    parent_id uuid PRIMARY KEY,
    parent    text NOT NULL,
    name      text NOT NULL UNIQUE
);

-- Where `attio-webhooks sync` is in each scope, so an interrupted run resumes.
CREATE TABLE sync_checkpoints (
    scope          text PRIMARY KEY,
    started_at     timestamptz NOT NULL,
    next_offset    bigint NOT NULL DEFAULT 0,
    created        bigint NOT NULL DEFAULT 0,
    updated        bigint NOT NULL DEFAULT 0,
    unchanged      bigint NOT NULL DEFAULT 0,
    completed_at   timestamptz
);
