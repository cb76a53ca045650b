
# pg_dump / pg_restore of a database using the extension.
#
# The source database holds committed keys with awkward bodies (every byte
# value, NUL only, empty, NULL, 200 kB), headers, status NULL, scopes and
# keys with quotes and non-ASCII characters, a 255-byte key, an expired key,
# an orphaned in-flight key (owner gone) and an in-flight key whose owner
# session is alive and idle.  It is dumped in custom format (restored with
# pg_restore into a new database on the same server and on another server)
# and in plain format (restored with psql; taken while the key table is
# unlogged).  Every restored copy must hold the same rows (all columns) and
# replay the same responses through idem_reserve / idem_get.
#
# In-flight keys after a restore: the orphan is taken over at once
# (attempt 2) everywhere.  The key whose owner is a live session of the
# source database is taken over at once too, on another server (its owner
# cannot be there) and on the same one: an owner is a session of the
# database that holds the record, and that session lives in another
# database, where it can never commit or release the copy.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = idem_node('dump', no_extension => 1);
my $other = idem_node('other', no_extension => 1);
my $psql = psql_bin($node);
my $dir = PostgreSQL::Test::Utils::tempdir();

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', 'CREATE EXTENSION idempotency');

my $long_key = 'L' x 255;
my $setup = <<"EOS";
CREATE FUNCTION pg_temp.put(k text, s text, st integer, b bytea, h jsonb,
                            t interval DEFAULT NULL, rh text DEFAULT NULL)
RETURNS void LANGUAGE sql AS \$\$
	SELECT idem_reserve(k, rh, t, '0', s);
	SELECT idem_commit(k, rh, st, b, h, s);
\$\$;
SELECT pg_temp.put('all-bytes', '', 200,
	(SELECT decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex')
	 FROM generate_series(0, 255) AS i),
	'{"content-type": "application/octet-stream"}', NULL, 'hash-1');
SELECT pg_temp.put('nul-only', '', 200, '\\x00000000'::bytea, '{}');
SELECT pg_temp.put('empty-body', 'tenant-a', 204, ''::bytea, '{"x": null}');
SELECT pg_temp.put('null-body', 'tenant-a', 202, NULL, '{"a": [1, 2, {"b": "c"}]}');
SELECT pg_temp.put('null-status', 'tenant-a', NULL, '\\xff'::bytea, '{}');
SELECT pg_temp.put('big', 'tenant-ü', 200,
	(SELECT decode(string_agg(lpad(to_hex((i * 2654435761) % 256), 2, '0'), '' ORDER BY i), 'hex')
	 FROM generate_series(1, 200000) AS i),
	'{"h": "\\u00e9\\u00fc\\u4e2d", "n": 1.50}', '30 days');
SELECT pg_temp.put('clé ü', 'tenant-ü', 201, convert_to('réponse ü', 'UTF8'), '{"é": "ü"}');
SELECT pg_temp.put('quote''key', 'o''brien', 409, '\\x27225c'::bytea, '{"q": "\\"\\\\"}');
SELECT pg_temp.put('$long_key', '', 200, '\\x01'::bytea, '{}');
SELECT pg_temp.put('expired', '', 200, '\\x02'::bytea, '{}', '1 second');
SELECT idem_reserve('orphan', 'hash-o');
EOS
$node->safe_psql('src', $setup);
my $owner = IdemTest::Session->new($psql, $node->connstr('src'), name => 'owner');
is($owner->query_safe(q{SELECT fresh, attempt FROM idem_reserve('live-owner', 'hash-l')}),
	't|1', 'source: a key in flight, its owner session alive and idle');
sleep 1;    # the 'expired' key expires

# Every row, every column (owner_pid included: the dump copies it).
my $ROWS = q{
	SELECT scope, key, state, request_hash, status, md5(body), length(body),
	       headers::text, attempt, ttl, created_at, expires_at, committed_at,
	       owner_pid, owner_started
	FROM idem_keys ORDER BY scope, key};
# What a user sees: each committed, unexpired key through idem_reserve.
my $REPLAY = q{
	SELECT t.scope, t.key, r.fresh, r.state, r.status, md5(r.body),
	       length(r.body), r.headers::text, r.attempt, r.expires_at
	FROM (SELECT scope, key FROM idem_keys
	      WHERE state = 'committed' AND expires_at > now()) AS t,
	     LATERAL idem_reserve(t.key, NULL, NULL, '0', t.scope) AS r
	ORDER BY 1, 2};
my $src_rows = $node->safe_psql('src', $ROWS);
my $src_replay = $node->safe_psql('src', $REPLAY);
is(scalar(() = $src_rows =~ /\n/g) + 1, 12, 'source: 12 records');
is(scalar(() = $src_replay =~ /\n/g) + 1, 9,
	'source: 9 committed, unexpired keys replay');

# Custom format, restored on the same server and on another one.
my $dump_c = "$dir/src.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-d', 'src', '-f', $dump_c ],
	'pg_dump -Fc of the source database');
$node->safe_psql('postgres', 'CREATE DATABASE dst_c');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'dst_c', $dump_c ],
	'pg_restore into a new database on the same server');
$other->safe_psql('postgres', 'CREATE DATABASE dst_x');
$other->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'dst_x', $dump_c ],
	'pg_restore into a new database on another server');

# Plain format, taken while the key table is unlogged.
$node->safe_psql('src', 'SELECT idem_set_logged(false)');
my $dump_p = "$dir/src.sql";
$node->command_ok([ 'pg_dump', '-Fp', '-d', 'src', '-f', $dump_p ],
	'pg_dump -Fp of the source database (key table unlogged)');
$node->safe_psql('postgres', 'CREATE DATABASE dst_p');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'dst_p', '-f', $dump_p ],
	'the plain dump restores with psql');
$node->safe_psql('src', 'SELECT idem_set_logged(true)');

my %copies = (
	'custom, same server' => [ $node, 'dst_c' ],
	'custom, other server' => [ $other, 'dst_x' ],
	'plain, same server' => [ $node, 'dst_p' ],
);
for my $name (sort keys %copies)
{
	my ($n, $db) = @{ $copies{$name} };
	is($n->safe_psql($db, $ROWS), $src_rows,
		"$name: every record comes back identical, all columns");
	is($n->safe_psql($db, $REPLAY), $src_replay,
		"$name: every committed key replays the same response");
	is( $n->safe_psql($db,
			q{SELECT encode(body, 'hex') FROM idem_reserve('all-bytes', 'hash-1')}),
		join('', map { sprintf '%02x', $_ } 0 .. 255),
		"$name: the body with every byte value, byte for byte");
	is($n->safe_psql($db, q{SELECT idem_get('expired') IS NULL}),
		't', "$name: the expired key counts as absent");
	my $r = run_sql($n, q{SELECT * FROM idem_reserve('all-bytes', 'other-hash', NULL, '0')},
		db => $db);
	is($r->{sqlstate}, 'IK422', "$name: the stored request hash still guards the key");
	is( $n->safe_psql($db,
			q{SELECT relpersistence FROM pg_class WHERE oid = 'idem_keys'::regclass}),
		'p', "$name: the key table is logged");
	is( $n->safe_psql($db,
			q{SELECT fresh, state, attempt FROM idem_reserve('orphan', 'hash-o', NULL, '0')}),
		't|in_flight|2', "$name: the orphaned in-flight key is taken over at once (attempt 2)");
}

# The in-flight key whose owner is a live session of src.
is( $other->safe_psql('dst_x',
		q{SELECT fresh, attempt FROM idem_reserve('live-owner', 'hash-l', NULL, '0')}),
	't|2', 'other server: the live-owner key is taken over at once (its owner is not there)');

my @observed;
for my $db (qw(dst_c dst_p))
{
	for my $wait ('0', '1s')
	{
		my $r = run_sql($node,
			"SELECT fresh, state, attempt FROM idem_reserve('live-owner', 'hash-l', NULL, '$wait')",
			db => $db);
		my $what = $r->{rc} == 0 ? "returned [$r->{out}]" : "failed with $r->{sqlstate}";
		push @observed, sprintf('%s, wait_timeout %s: %s after %.2f s',
			$db, $wait, $what, $r->{elapsed});
		ok($r->{rc} == 0 && $r->{out} eq 't|in_flight|2',
			"$db: while the source owner lives, reserve (wait $wait) takes "
			  . 'the copy over at once (attempt 2)')
		  or diag("rc $r->{rc} out [$r->{out}] err [$r->{err}]");
		cmp_ok($r->{elapsed}, '<', ($wait eq '0' ? 0 : 1) + 3,
			"$db: ... within wait_timeout");
		last if $r->{rc} == 0;    # taken over: nothing more to see
	}
}

# The source owner commits in src; the copies are separate worlds.
is($owner->query_safe(q{SELECT idem_commit('live-owner', 'hash-l', 200, '\x0a'::bytea)}),
	't', 'source: the owner commits its key in the source database');
is( $node->safe_psql('dst_c', q{SELECT state FROM idem_get('live-owner')}),
	'in_flight', 'dst_c: the commit in the source does not reach the copy');
$owner->close;
ok( defined wait_until(10, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'src' AND backend_type = 'client backend'})
		  eq '0';
	}),
	'the source owner session has ended');
for my $db (qw(dst_c dst_p))
{
	my $r = run_sql($node,
		q{SELECT fresh, state, attempt FROM idem_reserve('live-owner', 'hash-l', NULL, '0')},
		db => $db);
	ok($r->{rc} == 0 && $r->{out} =~ /^t\|in_flight\|[23]$/,
		"$db: once the source owner is gone, the key is taken over at once")
	  or diag("rc $r->{rc} out [$r->{out}] err [$r->{err}]");
	push @observed, "$db after the source owner ended: [$r->{out}]";
}
is( $node->safe_psql('src',
		q{SELECT fresh, state, status FROM idem_reserve('live-owner', 'hash-l', NULL, '0')}),
	'f|committed|200', 'source: the key replays its own commit');

diag("restored in-flight key whose owner lives in the source database:\n  "
	  . join("\n  ", @observed));

$node->stop;
$other->stop;
done_testing();
