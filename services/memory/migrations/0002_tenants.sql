-- Atalaya memory store, version 2: every row carries its tenant.
--
-- Keys and indexes lead with the tenant, so (tenant, user) scopes every read and
-- delete. Rows stored before tenants existed belong to the default tenant
-- ('default', services.common.identity.DEFAULT_TENANT). The column keeps no
-- default afterwards: every insert names its tenant.
--
-- Row-level security is the second wall: each table is visible and writable only
-- for the tenant that the transaction names in the setting atalaya.tenant (the
-- store sets it with set_config(..., true) at the start of every transaction), so
-- a query that forgets its tenant filter still sees its own tenant's rows only. A
-- transaction that names no tenant sees nothing. FORCE applies the policies to the
-- tables' owner too. Superusers and BYPASSRLS roles are never subject to them:
-- such a login role switches to the role atalaya_memory below (SET ROLE) for
-- every query the store sends.

ALTER TABLE feedback DROP CONSTRAINT feedback_user_id_session_id_turn_request_id_fkey;
ALTER TABLE turns DROP CONSTRAINT turns_user_id_session_id_fkey;

ALTER TABLE sessions ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE turns ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE memories ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE user_memory_stats ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE feedback ADD COLUMN tenant text NOT NULL DEFAULT 'default';

ALTER TABLE sessions
    ALTER COLUMN tenant DROP DEFAULT,
    DROP CONSTRAINT sessions_pkey,
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (tenant, user_id, session_id);

ALTER TABLE turns
    ALTER COLUMN tenant DROP DEFAULT,
    DROP CONSTRAINT turns_pkey,
    ADD CONSTRAINT turns_pkey PRIMARY KEY (tenant, user_id, session_id, turn_index),
    DROP CONSTRAINT turns_user_id_session_id_request_id_key,
    ADD CONSTRAINT turns_request_key UNIQUE (tenant, user_id, session_id, request_id),
    ADD CONSTRAINT turns_session_fkey FOREIGN KEY (tenant, user_id, session_id)
        REFERENCES sessions (tenant, user_id, session_id) ON DELETE CASCADE;
DROP INDEX turns_user_request;
CREATE INDEX turns_user_request ON turns (tenant, user_id, request_id);

ALTER TABLE memories
    ALTER COLUMN tenant DROP DEFAULT,
    DROP CONSTRAINT memories_user_id_request_id_position_key,
    ADD CONSTRAINT memories_request_key UNIQUE (tenant, user_id, request_id, position);
DROP INDEX memories_user_session;
CREATE INDEX memories_user_session ON memories (tenant, user_id, session_id);

ALTER TABLE user_memory_stats
    ALTER COLUMN tenant DROP DEFAULT,
    DROP CONSTRAINT user_memory_stats_pkey,
    ADD CONSTRAINT user_memory_stats_pkey PRIMARY KEY (tenant, user_id);

ALTER TABLE feedback
    ALTER COLUMN tenant DROP DEFAULT,
    DROP CONSTRAINT feedback_pkey,
    ADD CONSTRAINT feedback_pkey PRIMARY KEY (tenant, user_id, turn_request_id),
    ADD CONSTRAINT feedback_turn_fkey FOREIGN KEY (tenant, user_id, session_id, turn_request_id)
        REFERENCES turns (tenant, user_id, session_id, request_id) ON DELETE CASCADE;
DROP INDEX feedback_recorded_at;
CREATE INDEX feedback_recorded_at ON feedback (tenant, recorded_at);

-- The policy's USING clause also checks written rows (no WITH CHECK given): a row
-- of another tenant can be neither read nor written.
ALTER TABLE sessions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (tenant = current_setting('atalaya.tenant', true));
ALTER TABLE turns ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON turns
    USING (tenant = current_setting('atalaya.tenant', true));
ALTER TABLE memories ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memories
    USING (tenant = current_setting('atalaya.tenant', true));
ALTER TABLE user_memory_stats ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON user_memory_stats
    USING (tenant = current_setting('atalaya.tenant', true));
ALTER TABLE feedback ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON feedback
    USING (tenant = current_setting('atalaya.tenant', true));

-- The role the store's queries run as when its login role would bypass the
-- policies (the embedded server's and the chart's in-cluster database's login role
-- is a superuser). It cannot log in, owns nothing and may only read and write the
-- tenants' tables. Roles are shared by every database of a server: another
-- database's migration may have created it already. A login role that may not
-- create roles (a plain owner on a managed database) skips this: the policies
-- already apply to it, FORCE being set.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'atalaya_memory') THEN
        CREATE ROLE atalaya_memory NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'role atalaya_memory not created: insufficient privilege';
END
$$;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'atalaya_memory') THEN
        GRANT USAGE ON SCHEMA public TO atalaya_memory;
        GRANT SELECT, INSERT, UPDATE, DELETE
            ON sessions, turns, memories, user_memory_stats, feedback TO atalaya_memory;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'role atalaya_memory not granted the tables: insufficient privilege';
END
$$;
