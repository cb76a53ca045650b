
# Streaming replication and failover.
#
# On a hot standby:
#   - idem_get returns the committed keys, identical to the primary's;
#   - idem_reserve of a committed key replays it;
#   - idem_reserve of a new key, or of a key in flight on the primary, fails
#     at once (well under 5 s, even with a long wait_timeout) with a class-25
#     error (25006, read-only), never hangs;
#   - idem_commit / idem_release of an in-flight key, idem_purge and
#     idem_set_logged fail with class 25.
# Failover: the standby is synchronous, the primary dies (-m immediate)
# under load with a key in flight in an idle session, the standby is
# promoted.  On the new primary every acknowledged commit replays, and the
# keys that were in flight are taken over at once (attempt 2).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = idem_node('primary', init => { allows_streaming => 1 });
my $psql = psql_bin($primary);

# Committed keys: binary bodies, headers, two scopes, a NULL body.
my $setup = '';
for my $i (1 .. 10)
{
	my $scope = $i % 2 ? '' : 'tenant-s';
	my $body = $i == 10 ? 'NULL' : "'\\x00ff80" . sprintf('%02x', $i) . "00'::bytea";
	$setup .= "SELECT fresh FROM idem_reserve('k$i', 'h$i', scope => '$scope');\n"
	  . "SELECT idem_commit('k$i', 'h$i', 200 + $i, $body, '{\"n\": $i, \"t\": \"\\u00e9\"}', '$scope');\n";
}
$primary->safe_psql('postgres', $setup);

my $KEYS = join ', ',
  map { my $s = $_ % 2 ? '' : 'tenant-s'; "('$s', 'k$_')" } 1 .. 10;
my $GET_ALL = qq(
	SELECT k.scope, k.key, g.state, g.status, md5(g.body), g.headers::text,
	       g.attempt, g.expires_at
	FROM (VALUES $KEYS) AS k(scope, key), LATERAL idem_get(k.key, k.scope) AS g
	ORDER BY 1, 2);
my $REPLAY_ALL = qq(
	SELECT k.scope, k.key, r.fresh, r.state, r.status, md5(r.body), r.headers::text
	FROM (VALUES $KEYS) AS k(scope, key),
	     LATERAL idem_reserve(k.key, NULL, NULL, '0', k.scope) AS r
	ORDER BY 1, 2);
my $primary_get = $primary->safe_psql('postgres', $GET_ALL);
my $primary_replay = $primary->safe_psql('postgres', $REPLAY_ALL);

# A key in flight on the primary, its owner idle.
my $owner = IdemTest::Session->new($psql, $primary->connstr('postgres'), name => 'owner');
is($owner->query_safe(q{SELECT fresh, attempt FROM idem_reserve('flying', 'hf')}),
	't|1', 'a key is in flight on the primary');
# ... and one whose ttl runs out while its owner lives: still in flight
is($owner->query_safe(q{SELECT fresh, attempt FROM idem_reserve('flying-short', NULL, '1 second')}),
	't|1', 'a key with a 1 s ttl is in flight on the primary');

$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->append_conf('postgresql.conf', "lc_messages = 'C'\n");
$standby->start;
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'),
	't', 'the standby is in recovery');
is($standby->safe_psql('postgres', $GET_ALL), $primary_get,
	'standby: idem_get returns every committed key as on the primary');
is($standby->safe_psql('postgres', $REPLAY_ALL), $primary_replay,
	'standby: idem_reserve replays every committed key (fresh = f, same response)');
is($standby->safe_psql('postgres', q{SELECT state, attempt FROM idem_get('flying')}),
	'in_flight|1', 'standby: idem_get shows the in-flight key');
# the standby cannot see the primary's sessions: an in-flight record past
# its ttl is still in flight there, as it is on the primary
$standby->safe_psql('postgres', 'SELECT pg_sleep(1.2)');
is($primary->safe_psql('postgres', q{SELECT state, attempt FROM idem_get('flying-short')}),
	'in_flight|1', 'primary: past its ttl, a live owner\'s key is still in flight');
is($standby->safe_psql('postgres', q{SELECT state, attempt FROM idem_get('flying-short')}),
	'in_flight|1', 'standby: the same key is in flight there too, not absent');
is($owner->query_safe(q{SELECT idem_release('flying-short')}), 't',
	'the owner releases it again');
$primary->wait_for_catchup($standby);

# Writes on the standby: class 25 at once.
my @writes = (
	[ 'reserve of a new key', q{SELECT * FROM idem_reserve('new-on-standby')} ],
	[ 'reserve of a new key, wait_timeout 60s',
		q{SELECT * FROM idem_reserve('new-on-standby', NULL, NULL, '60s')} ],
	[ 'reserve of a new key in a scope', q{SELECT * FROM idem_reserve('x', scope => 'tenant-s')} ],
	[ 'reserve of the key in flight on the primary, wait_timeout 60s',
		q{SELECT * FROM idem_reserve('flying', 'hf', NULL, '60s')} ],
	[ 'commit of the key in flight on the primary',
		q{SELECT idem_commit('flying', 'hf', 200, '\x00'::bytea)} ],
	[ 'release of the key in flight on the primary', q{SELECT idem_release('flying')} ],
	[ 'purge', q{SELECT idem_purge()} ],
	[ 'purge with a batch limit', q{SELECT idem_purge(10)} ],
	[ 'set_logged', q{SELECT idem_set_logged(false)} ],
);
my $max_elapsed = 0;
for my $w (@writes)
{
	my ($what, $sql) = @$w;
	my $r = run_sql($standby, $sql, timeout => 30);
	$max_elapsed = $r->{elapsed} if $r->{elapsed} > $max_elapsed;
	ok( $r->{rc} != 0
		  && defined $r->{sqlstate}
		  && $r->{sqlstate} =~ /^25/
		  && $r->{elapsed} < 5,
		sprintf('standby: %s fails at once with class 25 (%s in %.3f s)',
			$what, $r->{sqlstate} // 'no error', $r->{elapsed}))
	  or diag("rc $r->{rc} timed out $r->{timed_out}\nout: $r->{out}\nerr: $r->{err}");
	note("$what: $r->{err}");
}
my $r = run_sql($standby, q{SELECT * FROM idem_reserve('new-on-standby')});
like($r->{err}, qr/ERROR:  25006: .*(recovery|read-only)/,
	'standby: the error says why (recovery / read-only), SQLSTATE 25006');

# Calls that write nothing work as on a primary.
is( $standby->safe_psql('postgres',
		q{SELECT idem_commit('k1', 'h1', 500, '\x00'::bytea)}),
	'f', 'standby: commit of an already committed key is the documented no-op (false)');
$r = run_sql($standby, q{SELECT idem_commit('never-reserved', NULL, 200, '\x00'::bytea)});
ok($r->{rc} != 0 && ($r->{sqlstate} // '') =~ /^(IK404|25...)$/ && $r->{elapsed} < 5,
	'standby: commit without a reservation fails at once (IK404 or class 25: '
	  . ($r->{sqlstate} // 'none') . ')')
  or diag($r->{err});
is( $standby->safe_psql('postgres',
		q{SELECT idem_release('never-reserved'), idem_release('k1')}),
	'f|f', 'standby: release of an absent or committed key returns false');
is($standby->safe_psql('postgres', q{SELECT idem_purge(0)}),
	'0', 'standby: purge with batch_limit 0 returns 0');
is($standby->safe_psql('postgres', $GET_ALL), $primary_get,
	'standby: the failed writes changed nothing');

# A commit on the primary shows on the standby.
$primary->safe_psql('postgres',
	q{SELECT idem_reserve('late', 'hl'); SELECT idem_commit('late', 'hl', 202, '\x0102'::bytea)});
$primary->wait_for_catchup($standby);
is( $standby->safe_psql('postgres',
		q{SELECT fresh, state, status, encode(body, 'hex') FROM idem_reserve('late', 'hl')}),
	'f|committed|202|0102', 'standby: a key committed later on the primary replays');

# Synchronous replication: every acknowledged commit is flushed on the standby.
$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'standby'\n");
$primary->reload;
ok( $primary->poll_query_until('postgres',
		q{SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'},
		'sync'),
	'the standby is synchronous');

my $script = '';
for my $i (1 .. 20000)
{
	$script .= "SELECT 'RES s$i' FROM idem_reserve('s$i') WHERE fresh;\n"
	  . "SELECT 'ACK s$i' WHERE idem_commit('s$i', NULL, 200, '\\x00ff'::bytea || convert_to('s$i', 'UTF8'));\n";
}
my @load = map {
	IdemTest::Client->new($psql, $primary->connstr('postgres'),
		$script =~ s/'(RES|ACK) s(\d+)'/'$1 c$_-$2'/gr =~ s/'s(\d+)'/'c$_-$1'/gr,
		name => "load$_")
} 1 .. 2;
ok( defined wait_until(30, sub {
		run_sql($primary, q{SELECT count(*) >= 200 FROM idem_keys WHERE key LIKE 'c_-%'},
			timeout => 5)->{out} eq 't';
	}),
	'the load runs on the primary');

my $t_fail = hires_now();
$primary->stop('immediate');
$_->wait(30) for @load;
$owner->close;
$standby->promote;
my $t_promoted = hires_now();
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'),
	'f', 'the standby is promoted');

my (@acked, @reserved);
for my $c (@load)
{
	push @acked, $c->{out} =~ /^ACK (\S+)$/mg;
	push @reserved, $c->{out} =~ /^RES (\S+)$/mg;
	note("$c->{name}: rc $c->{rc}; stderr: $c->{err}");
}
cmp_ok(scalar @acked, '>=', 100,
	'many commits were acknowledged before the primary died (' . scalar(@acked) . ')');

my $new = $standby;
$r = run_sql($new, sprintf(q{
	SELECT k FROM unnest(ARRAY[%s]::text[]) AS k,
	     LATERAL idem_reserve(k, NULL, NULL, '0') AS r
	WHERE r.fresh OR r.state <> 'committed' OR r.status <> 200
	   OR r.body IS DISTINCT FROM '\x00ff'::bytea || convert_to(k, 'UTF8')
	ORDER BY 1}, join(', ', map { "'$_'" } @acked)));
is($r->{rc} . '|' . $r->{out}, '0|',
	'new primary: every acknowledged commit of the old primary replays, intact')
  or diag("lost: $r->{out}\n$r->{err}");

is($new->safe_psql('postgres', $REPLAY_ALL), $primary_replay,
	'new primary: the first committed keys replay unchanged');

$r = run_sql($new, sprintf(q{
	SELECT count(*) FROM unnest(ARRAY[%s]::text[]) AS k WHERE idem_get(k) IS NULL},
	join(', ', map { "'$_'" } @reserved)));
is($r->{out}, '0', 'new primary: no acknowledged reservation vanished');

is($new->safe_psql('postgres', q{SELECT state, attempt FROM idem_get('flying')}),
	'in_flight|1', 'new primary: the key that was in flight is still in flight');
my $t0 = hires_now();
$r = run_sql($new, q{SELECT fresh, state, attempt FROM idem_reserve('flying', 'hf', NULL, '0')});
is($r->{out}, 't|in_flight|2',
	'new primary: the in-flight key is taken over at once with attempt 2')
  or diag($r->{err});
my $takeover_s = hires_now() - $t0;

my $inflight = $new->safe_psql('postgres',
	q{SELECT count(*) FROM idem_keys WHERE state = 'in_flight'});
$r = run_sql($new, q{
	SELECT count(*) FILTER (WHERE r.fresh AND r.attempt = t.attempt + 1), count(*)
	FROM (SELECT scope, key, attempt FROM idem_keys WHERE state = 'in_flight'
	      ORDER BY scope, key) AS t,
	     LATERAL idem_reserve(t.key, NULL, NULL, '0', t.scope) AS r});
is($r->{out}, "$inflight|$inflight",
	"new primary: all $inflight in-flight records are taken over at once")
  or diag($r->{err});

is( $new->safe_psql('postgres',
		q{SELECT fresh, attempt FROM idem_reserve('after-failover');
		  SELECT idem_commit('after-failover', NULL, 201, '\x00'::bytea);
		  SELECT fresh, status FROM idem_reserve('after-failover')}),
	"t|1\nt\nf|201", 'new primary: new keys reserve, commit and replay');

diag(sprintf 'standby: slowest rejected write %.3f s; failover: %d acknowledged '
	  . 'commits checked on the new primary, %d in-flight records taken over; '
	  . 'promotion took %.2f s, takeover call %.3f s',
	$max_elapsed, scalar @acked, $inflight, $t_promoted - $t_fail, $takeover_s);

$new->stop;
done_testing();
