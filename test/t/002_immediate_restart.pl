
# pg_ctl stop -m immediate under load, then a restart.
#
# Logged key table (the default): a few clients loop over reserve + commit
# (some in explicit transactions, some releasing instead), printing a line
# only once the server has acknowledged the step.  Sessions hold in-flight
# keys, idle.  Then the server is stopped with -m immediate (no checkpoint,
# no clean shutdown: crash recovery at the next start).  Afterwards:
#   - every key whose commit was acknowledged is committed, with its body;
#   - every key whose release was acknowledged is absent;
#   - every in-flight record is taken over at once (wait_timeout 0 gives
#     fresh with attempt + 1, never IK409);
#   - a reservation made in a transaction that never committed is absent.
# Unlogged (idem_set_logged(false)): after the crash the table is empty (the
# documented loss), it stays unlogged, and reserve/commit work as on a new
# table (fresh, attempt 1).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $ROUNDS = $ENV{IDEM_TAP_ROUNDS} || 2;    # more: IDEM_TAP_ROUNDS=n
my $CLIENTS = 4;
my $ITERATIONS = 20000;    # more than the load gets through before the crash

my $node = idem_node('immediate', conf => [ 'fsync = on', 'max_connections = 40' ]);
my $psql = psql_bin($node);
my $cs = $node->connstr('postgres');

# The body stored for a key: text, a NUL and a high byte.
my $BODY_SQL = q{convert_to('body-' || %s, 'UTF8') || '\x00ff'::bytea};

sub load_script
{
	my ($round, $c) = @_;
	my $s = '';
	for my $i (1 .. $ITERATIONS)
	{
		my $k = "r$round-c$c-$i";
		my $body = sprintf $BODY_SQL, "'$k'";
		if ($i % 7 == 0)
		{
			# reserve, then release
			$s .= "SELECT 'RES $k' FROM idem_reserve('$k') WHERE fresh;\n"
			  . "SELECT 'REL $k' WHERE idem_release('$k');\n";
		}
		elsif ($i % 3 == 0)
		{
			# reserve and commit in one transaction
			# (not acknowledged before COMMIT: no RES line)
			$s .= "BEGIN;\nSELECT fresh FROM idem_reserve('$k') WHERE NOT fresh;\n"
			  . "SELECT idem_commit('$k', NULL, 200, $body, '{\"k\": \"$k\"}');\n"
			  . "COMMIT;\n\\echo ACK $k\n";
		}
		else
		{
			$s .= "SELECT 'RES $k' FROM idem_reserve('$k') WHERE fresh;\n"
			  . "SELECT 'ACK $k' WHERE idem_commit('$k', NULL, 200, $body, "
			  . "'{\"k\": \"$k\"}');\n";
		}
	}
	return $s;
}

sub sql_list
{
	return join ', ', map { "'$_'" } @_;
}

my %totals = (acked => 0, released => 0, inflight_taken => 0, ack_lost => 0,
	rel_lost => 0);
for my $round (1 .. $ROUNDS)
{
	# Sessions holding in-flight keys, idle; one inside an open transaction.
	my @holders;
	for my $h (1 .. 3)
	{
		my $s = IdemTest::Session->new($psql, $cs, name => "holder$h");
		$s->query_safe("SELECT fresh FROM idem_reserve('r$round-held-$h', 'h$h')");
		push @holders, $s;
	}
	my $txholder = IdemTest::Session->new($psql, $cs, name => 'txholder');
	$txholder->query_safe("BEGIN; SELECT fresh FROM idem_reserve('r$round-held-tx')");

	my @clients = map {
		IdemTest::Client->new($psql, "$cs application_name=load$_",
			load_script($round, $_), name => "load$_")
	} 1 .. $CLIENTS;

	my $loaded = wait_until(30, sub {
		my $r = run_sql($node,
			"SELECT count(*) >= 600 FROM idem_keys WHERE key LIKE 'r$round-c%'",
			timeout => 5);
		return $r->{out} eq 't';
	});
	ok(defined $loaded, "round $round: the load is running");

	$node->stop('immediate');
	my $ended = 1;
	$ended &&= $_->wait(30) for @clients;
	ok($ended, "round $round: every load client stopped with the server");
	my $finished = grep { $_->{out} =~ /ACK r$round-c\d+-$ITERATIONS$/m } @clients;
	is($finished, 0, "round $round: the crash came in the middle of the load");
	$_->close for @holders, $txholder;

	my (%acked, %reserved, %released);
	for my $c (@clients)
	{
		for my $line (split /\n/, $c->{out})
		{
			$acked{$1} = 1 if $line =~ /^ACK (\S+)$/;
			$reserved{$1} = 1 if $line =~ /^RES (\S+)$/;
			$released{$1} = 1 if $line =~ /^REL (\S+)$/;
		}
		note("$c->{name}: rc $c->{rc}, stderr: $c->{err}");
	}
	my @acked = sort keys %acked;
	my @released = sort keys %released;
	my @unacked = grep { !$acked{$_} && !$released{$_} } sort keys %reserved;
	note(sprintf 'round %d: %d commits and %d releases acknowledged, %d reserved '
		  . 'without an acknowledged end', $round, scalar @acked, scalar @released,
		scalar @unacked);
	cmp_ok(scalar @acked, '>=', 100, "round $round: many commits were acknowledged");

	$node->start;

	# Acknowledged commits: committed, with their response.
	my $r = run_sql($node, sprintf(q{
		SELECT k FROM unnest(ARRAY[%s]::text[]) AS k
		LEFT JOIN LATERAL idem_get(k) AS g ON true
		WHERE g.state IS DISTINCT FROM 'committed'
		   OR g.status IS DISTINCT FROM 200
		   OR g.body IS DISTINCT FROM (%s)
		   OR g.headers IS DISTINCT FROM jsonb_build_object('k', k)
		ORDER BY 1}, sql_list(@acked), sprintf($BODY_SQL, 'k')));
	is($r->{rc} . '|' . $r->{out}, '0|',
		"round $round: all " . scalar(@acked) . ' acknowledged commits survived, intact')
	  or diag("lost or damaged: $r->{out}\n$r->{err}");

	# The same through idem_reserve: a replay, never a fresh reservation.
	$r = run_sql($node, sprintf(q{
		SELECT count(*) FILTER (WHERE NOT r.fresh AND r.state = 'committed'), count(*)
		FROM unnest(ARRAY[%s]::text[]) AS k,
		     LATERAL idem_reserve(k, NULL, NULL, '0') AS r}, sql_list(@acked)));
	is($r->{out}, scalar(@acked) . '|' . scalar(@acked),
		"round $round: idem_reserve replays every acknowledged commit")
	  or diag($r->{err});

	# Acknowledged releases: absent.
	$r = run_sql($node, sprintf(q{
		SELECT k FROM unnest(ARRAY[%s]::text[]) AS k
		WHERE idem_get(k) IS NOT NULL ORDER BY 1}, sql_list(@released)));
	is($r->{rc} . '|' . $r->{out}, '0|',
		"round $round: all " . scalar(@released) . ' acknowledged releases stayed released')
	  or diag("came back: $r->{out}\n$r->{err}");

	# Reserved but not acknowledged as finished: still in flight, or what
	# the unacknowledged last step did (committed for a commit step, absent
	# for a release step: the answer was lost with the crash).
	$r = run_sql($node, sprintf(q{
		SELECT CASE WHEN split_part(k, '-', 3)::int %% 7 = 0 THEN 'release' ELSE 'commit' END,
		       coalesce(g.state, 'absent'), count(*), string_agg(k, ' ' ORDER BY k)
		FROM unnest(ARRAY[%s]::text[]) AS k LEFT JOIN LATERAL idem_get(k) AS g ON true
		GROUP BY 1, 2 ORDER BY 1, 2}, sql_list(@unacked)));
	note("round $round: reserved without an acknowledged end, by step and state now:\n$r->{out}");
	unlike($r->{out}, qr/^commit\|absent/m,
		"round $round: no acknowledged reservation vanished");
	$totals{ack_lost} += $1 if $r->{out} =~ /^commit\|committed\|(\d+)/m;
	$totals{rel_lost} += $1 if $r->{out} =~ /^release\|absent\|(\d+)/m;

	is( $node->safe_psql('postgres',
			"SELECT fresh, attempt FROM idem_reserve('r$round-held-2', 'h2', NULL, '0')"),
		't|2', "round $round: a held key is taken over by a single reserve (attempt 2)");
	is( $node->safe_psql('postgres',
			"SELECT idem_get('r$round-held-tx') IS NULL, "
			  . "(SELECT (CASE WHEN fresh THEN 'fresh' ELSE 'not fresh' END) || ' attempt ' || attempt "
			  . "FROM idem_reserve('r$round-held-tx', NULL, NULL, '0'))"),
		't|fresh attempt 1',
		"round $round: a reservation whose transaction never committed is absent");
	# Every in-flight record: taken over at once by a new session.
	my $inflight = $node->safe_psql('postgres',
		q{SELECT count(*) FROM idem_keys WHERE state = 'in_flight'});
	cmp_ok($inflight, '>=', 3,
		"round $round: the held keys are in flight after the restart ($inflight records)");
	$r = run_sql($node, q{
		SELECT count(*) FILTER (WHERE r.fresh AND r.attempt = t.attempt + 1), count(*)
		FROM (SELECT scope, key, attempt FROM idem_keys
		      WHERE state = 'in_flight' ORDER BY scope, key) AS t,
		     LATERAL idem_reserve(t.key, NULL, NULL, '0', t.scope) AS r});
	is($r->{out}, "$inflight|$inflight",
		"round $round: every in-flight key is taken over at once with attempt + 1")
	  or diag("rc $r->{rc}\nout $r->{out}\nerr $r->{err}");
	is($r->{sqlstate}, undef, "round $round: no IK409 (or any error) on takeover")
	  or diag($r->{err});
	$totals{inflight_taken} += $inflight;

	$totals{acked} += @acked;
	$totals{released} += @released;
}

#
# Unlogged: the documented loss, and nothing worse.
#
$node->safe_psql('postgres', 'SELECT idem_set_logged(false)');
is( $node->safe_psql('postgres',
		q{SELECT relpersistence FROM pg_class WHERE oid = 'idem_keys'::regclass}),
	'u', 'the key table is unlogged');
my $fill = '';
$fill .= "SELECT fresh FROM idem_reserve('u-$_'); "
  . "SELECT idem_commit('u-$_', NULL, 200, '\\x00ff'::bytea);\n"
  for 1 .. 50;
$node->safe_psql('postgres', $fill);
my $uholder = IdemTest::Session->new($psql, $cs, name => 'uholder');
$uholder->query_safe("SELECT fresh FROM idem_reserve('u-held')");
is($node->safe_psql('postgres', q{SELECT count(*) FROM idem_keys WHERE key LIKE 'u-%'}),
	'51', 'unlogged: 50 committed keys and one in flight before the crash');

$node->stop('immediate');
$uholder->close;
$node->start;

is($node->safe_psql('postgres', 'SELECT count(*) FROM idem_keys'),
	'0', 'unlogged: the table is empty after the crash (the documented loss)');
is( $node->safe_psql('postgres',
		q{SELECT relpersistence FROM pg_class WHERE oid = 'idem_keys'::regclass}),
	'u', 'unlogged: the table is still unlogged');
is($node->safe_psql('postgres', q{SELECT idem_get('u-1') IS NULL}),
	't', 'unlogged: idem_get finds nothing');
is( $node->safe_psql('postgres',
		q{SELECT fresh, state, attempt FROM idem_reserve('u-1', NULL, NULL, '0');
		  SELECT idem_commit('u-1', NULL, 201, '\x01'::bytea);
		  SELECT fresh, state, status, encode(body, 'hex') FROM idem_reserve('u-1')}),
	"t|in_flight|1\nt\nf|committed|201|01",
	'unlogged: a lost key is reserved anew (fresh, attempt 1), commits and replays');
is( $node->safe_psql('postgres',
		q{SELECT fresh, attempt FROM idem_reserve('u-held', NULL, NULL, '0')}),
	't|1', 'unlogged: the lost in-flight key is a new reservation (attempt 1), not an error');
$node->safe_psql('postgres', 'SELECT idem_set_logged(true)');
is( $node->safe_psql('postgres',
		q{SELECT relpersistence FROM pg_class WHERE oid = 'idem_keys'::regclass;
		  SELECT state, status FROM idem_get('u-1')}),
	"p\ncommitted|201", 'switching back to logged keeps the keys');

diag(sprintf 'immediate stop under load: %d rounds, %d acknowledged commits and '
	  . '%d acknowledged releases checked, %d in-flight records taken over, '
	  . '%d unacknowledged commits found committed, %d unacknowledged releases '
	  . 'found released',
	$ROUNDS, $totals{acked}, $totals{released}, $totals{inflight_taken},
	$totals{ack_lost}, $totals{rel_lost});

$node->stop;
done_testing();
