-- plpgsql_baseline.sql: the idempotency contract written by hand in
-- PL/pgSQL, as a competent user would, for the benchmark to compare with.
--
-- A table of the same shape as the extension's key table, and functions
-- bl_reserve / bl_commit / bl_release / bl_get / bl_purge with the same
-- arguments and the same outcomes as idem_reserve and friends:
--
--  * the owner of an in-flight key holds a session-level advisory lock on
--    hashtextextended(scope || key); waiters queue on it in shared mode
--    (pg_advisory_lock_shared), with lock_timeout as the wait timeout, and
--    read the record again when they get it;
--  * bl_commit and bl_release take the same lock at transaction level
--    before they drop the session lock, so the key stays locked until the
--    transaction that stored the response has committed: a waiter never
--    finds the record still in flight with the lock free;
--  * an in-flight record whose lock can be taken belongs to a session that
--    is gone (checked in pg_stat_activity) and is taken over, attempt + 1.
--
-- Shortcuts a hand-written version takes, and the extension does not: the
-- lock is a 64-bit hash of the key (two keys may share a lock, which only
-- makes one wait for the other); a live owner is recognised by its PID and
-- a backend start time before the reservation; DISCARD ALL and
-- pg_advisory_unlock_all() lose the owner its lock (a waiter then polls
-- every few milliseconds until the owner finishes); a rolled back
-- bl_commit leaves the key in flight without its lock, likewise.

CREATE TABLE bl_keys (
	scope			text		NOT NULL,
	key				text		NOT NULL,
	state			text		NOT NULL
		CHECK (state IN ('in_flight', 'committed')),
	request_hash	text,
	status			integer,
	headers			jsonb,
	body			bytea,
	attempt			integer		NOT NULL DEFAULT 1,
	ttl				interval	NOT NULL,
	created_at		timestamptz	NOT NULL,
	expires_at		timestamptz	NOT NULL,
	committed_at	timestamptz,
	owner_pid		integer,
	owner_started	timestamptz,
	PRIMARY KEY (scope, key)
) WITH (fillfactor = 80);

CREATE TYPE bl_reservation AS (
	fresh		boolean,
	state		text,
	status		integer,
	headers		jsonb,
	body		bytea,
	attempt		integer,
	created_at	timestamptz,
	expires_at	timestamptz
);

-- the advisory lock of a key
CREATE FUNCTION bl_lock_id(p_scope text, p_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN hashtextextended(p_scope || E'\x1f' || p_key, 0);

-- is the session that reserved at p_since with PID p_pid still there?
CREATE FUNCTION bl_owner_alive(p_pid integer, p_since timestamptz)
RETURNS boolean
LANGUAGE sql STABLE
RETURN p_pid IS NOT NULL AND EXISTS (
	SELECT 1 FROM pg_stat_activity a
	WHERE a.pid = p_pid AND a.backend_start <= p_since);

CREATE FUNCTION bl_check_key(p_key text, p_scope text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF p_key IS NULL OR p_scope IS NULL THEN
		RAISE EXCEPTION 'idempotency key and scope must not be null'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF p_key = '' THEN
		RAISE EXCEPTION 'idempotency key must not be empty'
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF octet_length(p_key) > 255 OR octet_length(p_scope) > 255 THEN
		RAISE EXCEPTION 'idempotency key or scope is too long'
			USING ERRCODE = 'string_data_right_truncation';
	END IF;
END
$$;

CREATE FUNCTION bl_reserve(p_key text,
						   p_request_hash text DEFAULT NULL,
						   p_ttl interval DEFAULT NULL,
						   p_wait_timeout interval DEFAULT NULL,
						   p_scope text DEFAULT '')
RETURNS bl_reservation
LANGUAGE plpgsql AS $$
DECLARE
	r		bl_keys;
	v_ttl	interval := coalesce(p_ttl, interval '24 hours');
	v_wait	interval := coalesce(p_wait_timeout, interval '30 seconds');
	lock_id	bigint := bl_lock_id(p_scope, p_key);
	deadline timestamptz;
	left_ms	bigint;
	res		bl_reservation;
	old_lt	text;
BEGIN
	PERFORM bl_check_key(p_key, p_scope);
	IF now() + v_ttl <= now() THEN
		RAISE EXCEPTION 'ttl must be positive' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF v_wait < interval '0' THEN
		RAISE EXCEPTION 'wait_timeout must not be negative' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	deadline := clock_timestamp() + v_wait;

	LOOP
		SELECT * INTO r FROM bl_keys k WHERE k.scope = p_scope AND k.key = p_key;

		IF FOUND AND (r.expires_at > now() OR r.state = 'in_flight')
		   AND r.request_hash <> p_request_hash THEN
			RAISE EXCEPTION 'idempotency key was used with a different request'
				USING ERRCODE = 'IK422',
					  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
		END IF;

		-- a committed response: replay it
		IF FOUND AND r.state = 'committed' AND r.expires_at > now() THEN
			res := (false, r.state, r.status, r.headers, r.body, r.attempt,
					r.created_at, r.expires_at);
			RETURN res;
		END IF;

		-- our own reservation: re-entrant
		IF FOUND AND r.state = 'in_flight' AND r.owner_pid = pg_backend_pid() THEN
			res := (true, r.state, NULL, NULL, NULL, r.attempt, r.created_at,
					r.expires_at);
			RETURN res;
		END IF;

		IF pg_try_advisory_lock(lock_id) THEN
			-- we own the key's lock: read again, then create or take over
			SELECT * INTO r FROM bl_keys k WHERE k.scope = p_scope AND k.key = p_key;
			IF FOUND AND r.state = 'committed' AND r.expires_at > now() THEN
				PERFORM pg_advisory_unlock(lock_id);
				CONTINUE;
			END IF;
			IF FOUND AND r.state = 'in_flight'
			   AND bl_owner_alive(r.owner_pid, r.owner_started) THEN
				-- its owner lost the lock but lives: look again shortly
				PERFORM pg_advisory_unlock(lock_id);
				IF clock_timestamp() >= deadline THEN
					RAISE EXCEPTION 'idempotency key is in flight'
						USING ERRCODE = 'IK409',
							  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
				END IF;
				PERFORM pg_sleep(0.002);
				CONTINUE;
			END IF;

			IF NOT FOUND THEN
				INSERT INTO bl_keys AS k (scope, key, state, request_hash, attempt,
										  ttl, created_at, expires_at,
										  owner_pid, owner_started)
				VALUES (p_scope, p_key, 'in_flight', p_request_hash, 1, v_ttl, now(),
						now() + v_ttl, pg_backend_pid(), now())
				RETURNING * INTO r;
			ELSE
				-- expired, or in flight with its owner gone
				UPDATE bl_keys k
				SET state = 'in_flight',
					request_hash = CASE WHEN r.state = 'in_flight' AND r.expires_at > now()
										THEN coalesce(p_request_hash, k.request_hash)
										ELSE p_request_hash END,
					status = NULL, headers = NULL, body = NULL,
					attempt = CASE WHEN r.state = 'in_flight' AND r.expires_at > now()
								   THEN k.attempt + 1 ELSE 1 END,
					ttl = v_ttl, created_at = now(),
					expires_at = now() + v_ttl, committed_at = NULL,
					owner_pid = pg_backend_pid(), owner_started = now()
				WHERE k.scope = p_scope AND k.key = p_key
				RETURNING * INTO r;
			END IF;
			res := (true, r.state, NULL, NULL, NULL, r.attempt, r.created_at,
					r.expires_at);
			RETURN res;
		END IF;

		-- somebody else holds the key: wait for its lock, then look again
		left_ms := ceil(extract(epoch FROM deadline - clock_timestamp()) * 1000);
		IF left_ms <= 0 THEN
			RAISE EXCEPTION 'idempotency key is in flight'
				USING ERRCODE = 'IK409',
					  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
		END IF;
		old_lt := current_setting('lock_timeout');
		BEGIN
			PERFORM set_config('lock_timeout', left_ms || 'ms', true);
			PERFORM pg_advisory_lock_shared(lock_id);
			PERFORM pg_advisory_unlock_shared(lock_id);
			PERFORM set_config('lock_timeout', old_lt, true);
		EXCEPTION WHEN lock_not_available THEN
			RAISE EXCEPTION 'timed out waiting for in-flight idempotency key'
				USING ERRCODE = 'IK409',
					  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
		END;
	END LOOP;
END
$$;

CREATE FUNCTION bl_commit(p_key text,
						  p_request_hash text,
						  p_status integer,
						  p_body bytea,
						  p_headers jsonb DEFAULT '{}',
						  p_scope text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
	r		bl_keys;
	lock_id	bigint := bl_lock_id(p_scope, p_key);
BEGIN
	PERFORM bl_check_key(p_key, p_scope);
	SELECT * INTO r FROM bl_keys k WHERE k.scope = p_scope AND k.key = p_key;
	IF NOT FOUND OR r.expires_at <= now() THEN
		RAISE EXCEPTION 'idempotency key has no live reservation'
			USING ERRCODE = 'IK404',
				  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
	END IF;
	IF r.request_hash IS NOT NULL AND p_request_hash IS NOT NULL
	   AND r.request_hash <> p_request_hash THEN
		RAISE EXCEPTION 'idempotency key was used with a different request'
			USING ERRCODE = 'IK422',
				  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
	END IF;
	IF r.state = 'committed' THEN
		RETURN false;
	END IF;
	IF r.owner_pid IS DISTINCT FROM pg_backend_pid() THEN
		-- another session's reservation: adopt it only if that one is gone
		IF bl_owner_alive(r.owner_pid, r.owner_started)
		   OR NOT pg_try_advisory_lock(lock_id) THEN
			RAISE EXCEPTION 'idempotency key is owned by another session'
				USING ERRCODE = 'IK409',
					  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
		END IF;
	END IF;

	-- hold the key until this transaction commits, then drop the session lock
	PERFORM pg_advisory_xact_lock(lock_id);
	UPDATE bl_keys k
	SET state = 'committed',
		request_hash = coalesce(k.request_hash, p_request_hash),
		status = p_status, headers = p_headers, body = p_body,
		committed_at = now(), expires_at = now() + k.ttl,
		owner_pid = NULL, owner_started = NULL
	WHERE k.scope = p_scope AND k.key = p_key AND k.state = 'in_flight';
	PERFORM pg_advisory_unlock(lock_id);
	RETURN true;
END
$$;

CREATE FUNCTION bl_release(p_key text, p_scope text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
	r		bl_keys;
	lock_id	bigint := bl_lock_id(p_scope, p_key);
BEGIN
	PERFORM bl_check_key(p_key, p_scope);
	SELECT * INTO r FROM bl_keys k WHERE k.scope = p_scope AND k.key = p_key;
	IF NOT FOUND OR r.state = 'committed' THEN
		RETURN false;
	END IF;
	IF r.owner_pid IS DISTINCT FROM pg_backend_pid() THEN
		IF bl_owner_alive(r.owner_pid, r.owner_started)
		   OR NOT pg_try_advisory_lock(lock_id) THEN
			RAISE EXCEPTION 'idempotency key is owned by another session'
				USING ERRCODE = 'IK409',
					  DETAIL = format('Key "%s" in scope "%s".', p_key, p_scope);
		END IF;
	END IF;
	PERFORM pg_advisory_xact_lock(lock_id);
	DELETE FROM bl_keys k
	WHERE k.scope = p_scope AND k.key = p_key AND k.state = 'in_flight';
	PERFORM pg_advisory_unlock(lock_id);
	RETURN true;
END
$$;

CREATE FUNCTION bl_get(p_key text, p_scope text DEFAULT '')
RETURNS bl_reservation
LANGUAGE sql STABLE
RETURN (SELECT ROW(false, k.state, k.status, k.headers, k.body, k.attempt,
				   k.created_at, k.expires_at)::bl_reservation
		FROM bl_keys k
		WHERE k.scope = p_scope AND k.key = p_key AND k.expires_at > now());

CREATE FUNCTION bl_purge(p_batch_limit integer DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	IF p_batch_limit IS NULL THEN
		DELETE FROM bl_keys k
		WHERE k.expires_at <= now()
		  AND (k.state = 'committed' OR NOT bl_owner_alive(k.owner_pid, k.owner_started));
	ELSE
		DELETE FROM bl_keys k
		WHERE k.ctid = ANY (ARRAY(
			SELECT c.ctid FROM bl_keys c
			WHERE c.expires_at <= now()
			  AND (c.state = 'committed' OR NOT bl_owner_alive(c.owner_pid, c.owner_started))
			LIMIT p_batch_limit));
	END IF;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;
