-- Atalaya memory store, version 1.
-- Placeholders in double braces are filled from settings when the store is created.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE store_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO store_info (key, value) VALUES ('embedding_dimension', '{{dimension}}');

-- Sessions are scoped by user: (user_id, session_id) is the key.
CREATE TABLE sessions (
    user_id    text        NOT NULL,
    session_id text        NOT NULL,
    turn_count bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, session_id)
);

CREATE TABLE turns (
    user_id    text        NOT NULL,
    session_id text        NOT NULL,
    turn_index bigint      NOT NULL,
    request_id text        NOT NULL,
    messages   jsonb       NOT NULL,
    metadata   jsonb       NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, session_id, turn_index),
    UNIQUE (user_id, session_id, request_id),
    FOREIGN KEY (user_id, session_id) REFERENCES sessions ON DELETE CASCADE
);
CREATE INDEX turns_user_request ON turns (user_id, request_id);

CREATE TABLE memories (
    memory_id  uuid        PRIMARY KEY,
    user_id    text        NOT NULL,
    request_id text        NOT NULL,
    position   int         NOT NULL,
    session_id text,
    text       text        NOT NULL,
    metadata   jsonb       NOT NULL DEFAULT '{}',
    embedding  vector({{dimension}}) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, request_id, position)
);
CREATE INDEX memories_user_session ON memories (user_id, session_id);
CREATE INDEX memories_embedding ON memories
    USING hnsw (embedding vector_cosine_ops)
    WITH (m = {{hnsw_m}}, ef_construction = {{hnsw_ef_construction}});

-- Memories per user, kept in the same transactions that add and erase memories;
-- Recall uses it to choose an exact scan (small users) or the HNSW index.
CREATE TABLE user_memory_stats (
    user_id  text   PRIMARY KEY,
    memories bigint NOT NULL
);

CREATE TABLE feedback (
    user_id         text        NOT NULL,
    turn_request_id text        NOT NULL,
    session_id      text        NOT NULL,
    score           real        NOT NULL CHECK (score >= 0 AND score <= 1),
    comment         text        NOT NULL DEFAULT '',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, turn_request_id),
    FOREIGN KEY (user_id, session_id, turn_request_id)
        REFERENCES turns (user_id, session_id, request_id) ON DELETE CASCADE
);
CREATE INDEX feedback_recorded_at ON feedback (recorded_at);
