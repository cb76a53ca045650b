
# Upgrade path, with sessions using the extension while it is updated.
#
# For every older version with an update path to the default version:
# install it, commit keys (binary bodies, headers, scopes), leave a key in
# flight in an idle owner session with a waiter blocked on it, leave an
# orphaned in-flight key, then ALTER EXTENSION idempotency UPDATE while the
# owner and the waiter are connected.  Afterwards:
#   - the update finished promptly (it does not wait on the sessions);
#   - every committed key replays as before;
#   - the live owner still owns its key (IK409 for others), commits it, and
#     the waiter that began waiting before the update gets that response;
#   - before that commit, the sessions connected before the update also make
#     lease reservations beside it (version 1.2's lease owners): a lease
#     owner reserves, others get IK409 or wait, another session extends and
#     commits with the token and wakes the lease's waiter, a lease that ran
#     out is taken over and its old token fenced; meanwhile the pre-update
#     session-owned reservation stays owned (re-entrant, IK409 for others),
#     so live reservations of both kinds coexist, and a waiter that came
#     after the update replays its commit too;
#   - before the update, a lease (the setting idem.lease) is refused with a
#     clear error (0A000) and reserves nothing;
#   - the orphan is taken over at once (attempt 2); new keys work;
#   - everything still holds after a server restart, and a lease taken
#     after the update is still live across it;
#   - a dump of the old-version database restores on the current version
#     with every key intact.
# Skipped while there is a single version.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = idem_node('upgrade', no_extension => 1);
my $psql = psql_bin($node);
my $dir = PostgreSQL::Test::Utils::tempdir();

my $default = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'idempotency'});
my @old = split /\n/, $node->safe_psql('postgres', qq{
	SELECT source FROM pg_extension_update_paths('idempotency')
	WHERE target = '$default' AND path IS NOT NULL AND source <> '$default'
	ORDER BY source});
if (!@old)
{
	$node->stop;
	plan skip_all => "no older version of the extension updates to $default";
}
note("default version $default; updating from: @old");

my $REPLAY = q{
	SELECT k.scope, k.key, r.fresh, r.state, r.status, encode(r.body, 'hex'),
	       r.headers::text, r.attempt, r.expires_at
	FROM (VALUES ('', 'c1'), ('', 'c2'), ('t-é', 'c3'), ('t-é', 'c4')) AS k(scope, key),
	     LATERAL idem_reserve(k.key, NULL, NULL, '0', k.scope) AS r
	ORDER BY 1, 2};

for my $v (@old)
{
	my $db = "upg_" . ($v =~ s/\W/_/gr);
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, "CREATE EXTENSION idempotency VERSION '$v'");
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
		$v, "$v: installed");

	$node->safe_psql($db, q{
		SELECT idem_reserve('c1', 'h1'); SELECT idem_commit('c1', 'h1', 200, '\x00ff0080'::bytea, '{"a": 1}');
		SELECT idem_reserve('c2'); SELECT idem_commit('c2', NULL, 204, NULL);
		SELECT idem_reserve('c3', scope => 't-é');
		SELECT idem_commit('c3', NULL, 201, convert_to('é', 'UTF8'), '{"é": [1, {"b": null}]}', 't-é');
		SELECT idem_reserve('c4', scope => 't-é');
		SELECT idem_commit('c4', NULL, NULL, ''::bytea, '{}', 't-é');
		SELECT idem_reserve('orphan');
	});
	my $before = $node->safe_psql($db, $REPLAY);

	my $owner = IdemTest::Session->new($psql, $node->connstr($db), name => "owner-$v");
	is($owner->query_safe(q{SELECT fresh, attempt FROM idem_reserve('held', 'hh')}),
		't|1', "$v: a live owner holds a key");
	my $waiter = IdemTest::Client->new($psql, $node->connstr($db),
		q{SELECT fresh, state, status, encode(body, 'hex'), attempt
		  FROM idem_reserve('held', 'hh', NULL, '60s');},
		name => "waiter-$v");
	ok(defined wait_until(20, sub { lock_waiters($node, $db) == 1 }),
		"$v: a waiter blocks on it");

	# Another session connected across the update, which has used the
	# extension before it.  A version before 1.2 has no lease columns: a
	# lease is refused, and nothing is reserved; 1.2 and later take it.
	my $other = IdemTest::Session->new($psql, $node->connstr($db), name => "other-$v");
	is($other->query_safe(q{SELECT state FROM idem_get('c1')}), 'committed',
		"$v: another session uses the extension before the update");
	my ($major, $minor) = split /\./, $v;
	my ($out, $err) = $other->query(
		q{SET idem.lease = '30s'; SELECT fresh FROM idem_reserve('early')});
	if ($major == 1 && $minor < 2)
	{
		is(sqlstate_of($err), '0A000', "$v: a lease before the update is refused (0A000)")
		  or diag("out [$out] err [$err]");
		is($other->query_safe(q{RESET idem.lease; SELECT idem_get('early') IS NULL}), 't',
			"$v: ... and reserved nothing");
	}
	else
	{
		is($out =~ s{\n\z}{}r, 't', "$v: a lease before the update is taken")
		  or diag("out [$out] err [$err]");
		is( $other->query_safe(
				q{RESET idem.lease; SELECT idem_release('early', '', owner_token) FROM idem_keys WHERE key = 'early'}),
			't', "$v: ... and released");
	}

	my $dump = "$dir/$db.dump";
	$node->command_ok([ 'pg_dump', '-Fc', '-d', $db, '-f', $dump ],
		"$v: pg_dump of the $v database");

	my $r = run_sql($node,
		"SET lock_timeout = '20s'; ALTER EXTENSION idempotency UPDATE",
		db => $db, timeout => 30);
	ok($r->{rc} == 0 && $r->{elapsed} < 5,
		sprintf('%s: ALTER EXTENSION UPDATE with the sessions connected (%.2f s)',
			$v, $r->{elapsed}))
	  or diag("rc $r->{rc}\n$r->{err}");
	is($node->safe_psql($db, q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'}),
		$default, "$v: updated to $default");

	is($node->safe_psql($db, $REPLAY), $before, "$v: committed keys replay as before");
	$r = run_sql($node, q{SELECT * FROM idem_reserve('held', 'hh', NULL, '0')}, db => $db);
	is($r->{sqlstate}, 'IK409', "$v: the live owner still owns its key")
	  or diag($r->{err});
	ok(!$waiter->finished, "$v: the waiter is still waiting");
	my $waiter2 = IdemTest::Client->new($psql, $node->connstr($db),
		q{SELECT fresh, state, status, encode(body, 'hex'), attempt
		  FROM idem_reserve('held', 'hh', NULL, '60s');},
		name => "waiter2-$v");
	ok(defined wait_until(20, sub { lock_waiters($node, $db) == 2 }),
		"$v: a waiter that came after the update blocks on the same key");

	# Lease owners, from the sessions connected before the update, while the
	# session owner still holds its key.
	is( $owner->query_safe(
			q{SELECT fresh, attempt, owner FROM idem_reserve('leased', 'hl', NULL, NULL, '', 'tok-a', '30s')}),
		't|1|tok-a', "$v: the owner's session makes a lease reservation after the update");
	$r = run_sql($node,
		q{SELECT * FROM idem_reserve('leased', 'hl', NULL, '0', '', 'tok-b', '30s')}, db => $db);
	is($r->{sqlstate}, 'IK409', "$v: another token gets IK409 for the lease-owned key")
	  or diag($r->{err});
	$r = run_sql($node, q{SELECT * FROM idem_reserve('held', 'hh', NULL, '0')}, db => $db);
	is($r->{sqlstate}, 'IK409', "$v: ... and for the session-owned key (both kinds live)")
	  or diag($r->{err});
	is( $node->safe_psql($db,
			q{SELECT string_agg(key || '=' || owner_alive, ',' ORDER BY key) FROM idem_list()
			  WHERE key IN ('held', 'leased')}),
		'held=true,leased=true', "$v: idem_list shows both owners alive");
	my $lwaiter = IdemTest::Client->new($psql,
		$node->connstr($db) . " application_name=lwaiter-$db",
		q{SELECT fresh, state, status, encode(body, 'hex'), attempt
		  FROM idem_reserve('leased', 'hl', NULL, '60s', '', 'tok-w', '30s');},
		name => "lwaiter-$v");
	ok(defined wait_until(20, sub { statement_waiters($node, "lwaiter-$db", 50, $db) == 1 }),
		"$v: a waiter blocks on the lease-owned key");
	is( $other->query_safe(
			q{SELECT idem_extend('leased', 'tok-a', '1 min') = now() + interval '1 minute'}),
		't', "$v: another session extends the lease with the token");
	is($owner->query_safe(q{SELECT fresh, attempt, owner FROM idem_reserve('held', 'hh')}),
		't|1|', "$v: the session owner reserves its pre-update key again (re-entrant, attempt 1)");

	# A lease that runs out: taken over, the old token fenced.
	is( $owner->query_safe(
			q{SELECT fresh FROM idem_reserve('fenced', 'hf', NULL, NULL, '', 'tok-old', '50ms');
			  SELECT pg_sleep(0.1)}),
		"t\n", "$v: a lease owner lets its 50 ms lease run out");
	is( $other->query_safe(
			q{SELECT fresh, attempt FROM idem_reserve('fenced', 'hf', NULL, '0', '', 'tok-new', '30s')}),
		't|2', "$v: another session takes that key over (attempt 2)");
	($out, $err) = $owner->query(
		q{SELECT idem_commit('fenced', 'hf', 200, '\xbad0'::bytea, '{}', '', 'tok-old')});
	is(sqlstate_of($err), 'IK409', "$v: the old token's commit is fenced") or diag($err);
	($out, $err) = $owner->query(q{SELECT idem_extend('fenced', 'tok-old')});
	is(sqlstate_of($err), 'IK409', "$v: ... and its extend") or diag($err);
	is( $other->query_safe(
			q{SELECT idem_commit('fenced', 'hf', 201, '\x00ff'::bytea, '{}', '', 'tok-new')}),
		't', "$v: the new owner commits");
	is( $node->safe_psql($db,
			q{SELECT status, encode(body, 'hex'), attempt FROM idem_get('fenced')}),
		'201|00ff|2', "$v: the new owner's response is stored");

	# The token commits the lease-owned key from the other session; its
	# waiter replays that.
	is( $other->query_safe(
			q{SELECT idem_commit('leased', 'hl', 202, '\x0c0d'::bytea, '{}', '', 'tok-a')}),
		't', "$v: the lease-owned key is committed with its token from another session");
	ok($lwaiter->wait(20), "$v: the lease's waiter returns");
	is($lwaiter->{out} =~ s{\n\z}{}r, 'f|committed|202|0c0d|1',
		"$v: ... replaying that commit")
	  or diag("rc $lwaiter->{rc} err $lwaiter->{err}");

	$r = run_sql($node, q{SELECT * FROM idem_reserve('held', 'hh', NULL, '0')}, db => $db);
	is($r->{sqlstate}, 'IK409', "$v: the session owner still owns its pre-update key")
	  or diag($r->{err});
	ok(!$waiter->finished, "$v: its waiter from before the update still waits");
	is($owner->query_safe(q{SELECT idem_commit('held', 'hh', 200, '\x0a0b'::bytea)}),
		't', "$v: the owner commits after the update");
	$waiter->wait(30);
	is($waiter->{out} =~ s{\n\z}{}r, 'f|committed|200|0a0b|1',
		"$v: the waiter from before the update replays that commit")
	  or diag("rc $waiter->{rc} err $waiter->{err}");
	$waiter2->wait(30);
	is($waiter2->{out} =~ s{\n\z}{}r, 'f|committed|200|0a0b|1',
		"$v: the waiter from after the update replays it too")
	  or diag("rc $waiter2->{rc} err $waiter2->{err}");
	is($node->safe_psql($db, q{SELECT fresh, attempt FROM idem_reserve('orphan', NULL, NULL, '0')}),
		't|2', "$v: the orphaned key is taken over at once");
	is( $node->safe_psql($db,
			q{SELECT fresh, attempt FROM idem_reserve('new');
			  SELECT idem_commit('new', NULL, 200, '\x01'::bytea);
			  SELECT fresh, status FROM idem_reserve('new')}),
		"t|1\nt\nf|200", "$v: new keys reserve, commit and replay");
	is( $owner->query_safe(
			q{SELECT fresh, attempt FROM idem_reserve('leased-live', 'hv', NULL, NULL, '', 'tok-v', '60s')}),
		't|1', "$v: a lease reservation left in flight at the restart");
	$owner->close;
	$other->close;

	$node->restart;
	is($node->safe_psql($db, $REPLAY), $before, "$v: after a restart the keys still replay");
	$r = run_sql($node, q{SELECT * FROM idem_reserve('leased-live', 'hv', NULL, '0')}, db => $db);
	is($r->{sqlstate}, 'IK409', "$v: after the restart the lease still lives (IK409)")
	  or diag($r->{err});
	is( $node->safe_psql($db,
			q{SELECT idem_commit('leased-live', 'hv', 200, NULL, '{}', '', 'tok-v');
			  SELECT state, attempt FROM idem_get('leased-live')}),
		"t\ncommitted|1", "$v: ... and its token commits it");
	is( $node->safe_psql($db,
			q{SELECT state, status, encode(body, 'hex') FROM idem_get('held')}),
		'committed|200|0a0b', "$v: ... and the key committed after the update too");

	# The old version's dump, restored where the default version is installed.
	my $rdb = "${db}_restored";
	$node->safe_psql('postgres', "CREATE DATABASE $rdb");
	$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $rdb, $dump ],
		"$v: its dump restores on the current installation");
	my $rv = $node->safe_psql($rdb,
		q{SELECT extversion FROM pg_extension WHERE extname = 'idempotency'});
	note("$v: the restored database has version $rv");
	is($node->safe_psql($rdb, $REPLAY), $before,
		"$v: every committed key of the old dump replays (restored as version $rv)");
	is( $node->safe_psql($rdb,
			q{SELECT fresh, attempt FROM idem_reserve('orphan', NULL, NULL, '0')}),
		't|2', "$v: the dump's orphaned key is taken over at once");
}

$node->stop;
done_testing();
