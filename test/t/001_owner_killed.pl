
# The owner of an in-flight key is killed with SIGKILL while two sessions
# wait for the key.  The postmaster treats a backend killed by a signal as a
# crash: it ends every backend (the waiters too) and reinitialises shared
# memory, so every lock is gone.  Afterwards:
#   - committed keys replay intact (status, headers, body byte for byte);
#   - the in-flight record survived, still attempt 1, and the first
#     reserve takes it over at once (attempt 2), exactly once, while the
#     other reservers wait for it and replay its response;
#   - no waiter came out of the crash holding a "fresh" reservation.
# Done for several rounds, each with a new key and a new crash.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $ROUNDS = $ENV{IDEM_TAP_ROUNDS} || 3;    # more: IDEM_TAP_ROUNDS=n

my $node = idem_node('owner_killed', conf => ['restart_after_crash = on']);
my $psql = psql_bin($node);
my $cs = $node->connstr('postgres');

# Committed keys: bodies with every byte value (NUL, high bytes), headers,
# two scopes.
my @committed;
for my $i (1 .. 12)
{
	my @bytes = map { ($_ * 7 + $i) % 256 } 0 .. 255 + $i;
	my $hex = join '', map { sprintf '%02x', $_ } @bytes;
	push @committed,
	  {
		scope => ($i % 2 ? '' : 'tenant-b'),
		key => "done-$i",
		status => 200 + $i,
		hex => $hex,
		headers => qq({"content-type": "application/octet-stream", "x-n": $i}),
	  };
}
my $setup = '';
for my $c (@committed)
{
	$setup .=
	    "SELECT fresh FROM idem_reserve('$c->{key}', 'h-$c->{key}', scope => '$c->{scope}');\n"
	  . "SELECT idem_commit('$c->{key}', 'h-$c->{key}', $c->{status}, '\\x$c->{hex}'::bytea, "
	  . "'$c->{headers}', '$c->{scope}');\n";
}
$node->safe_psql('postgres', $setup);

# Every committed key through idem_reserve, one line each.
sub replay_all
{
	my ($keys) = @_;
	my $values = join ', ', map { "('$_->{scope}', '$_->{key}')" } @$keys;
	my $r = run_sql($node, qq(
		SELECT k.scope, k.key, r.fresh, r.state, r.status,
		       encode(r.body, 'hex'), r.headers::text, r.attempt
		FROM (VALUES $values) AS k(scope, key),
		     LATERAL idem_reserve(k.key, NULL, NULL, '0', k.scope) AS r
		ORDER BY 1, 2));
	return $r->{rc} == 0 ? $r->{out} : "ERROR: $r->{err}";
}

my $before = replay_all(\@committed);
my $bytes_ok = 1;
for my $line (split /\n/, $before)
{
	my ($scope, $key, $fresh, $state, $status, $hex) = split /\|/, $line;
	my ($c) = grep { $_->{key} eq $key } @committed;
	$bytes_ok = 0
	  unless $c && $fresh eq 'f' && $state eq 'committed' && $hex eq $c->{hex};
}
ok($bytes_ok && scalar(split /\n/, $before) == @committed,
	'committed keys replay with their bodies byte for byte before any crash')
  or diag($before);

my @takeover_ms;
my @restart_s;
for my $round (1 .. $ROUNDS)
{
	my $k = "inflight-$round";

	my $owner = IdemTest::Session->new($psql, "$cs application_name=owner$round",
		name => "owner$round");
	is($owner->query_safe("SELECT fresh, attempt FROM idem_reserve('$k', 'h-$k')"),
		't|1', "round $round: the owner reserves $k (fresh, attempt 1)");
	my $owner_pid = $owner->query_safe('SELECT pg_backend_pid()');

	# What the owner is doing when it dies: round 1 idles after the
	# reserve; round 2 idles in an open transaction that has called
	# idem_commit (never committed); round 3 runs a statement.
	my $doing = 'idle';
	if ($round % 3 == 2)
	{
		$doing = 'in a transaction that called idem_commit';
		is( $owner->query_safe(
				"BEGIN; SELECT idem_commit('$k', 'h-$k', 299, '\\xdead'::bytea)"),
			't', "round $round: the owner calls idem_commit in a transaction left open");
	}
	elsif ($round % 3 == 0)
	{
		$doing = 'running a statement';
		$owner->send('SELECT pg_sleep(60)');
	}

	my @waiters = map {
		IdemTest::Client->new($psql, "$cs application_name=waiter$round$_",
			"SELECT 'fresh=' || fresh || ' attempt=' || attempt || ' state=' || state "
			  . "FROM idem_reserve('$k', 'h-$k', NULL, '60s');\n",
			name => "waiter$_")
	} 1 .. 2;
	my $waited = wait_until(30, sub { lock_waiters($node) == 2 });
	ok(defined $waited, "round $round: two waiters block on $k (owner $doing)")
	  or diag('lock waiters: ' . lock_waiters($node));

	my $probe = run_sql($node,
		"SELECT fresh FROM idem_reserve('$k', 'h-$k', NULL, '0')");
	is($probe->{sqlstate}, 'IK409',
		"round $round: while the owner lives, wait_timeout 0 gives IK409")
	  or diag("rc $probe->{rc}\nout $probe->{out}\nerr $probe->{err}");

	my $log_offset = -s $node->logfile;
	my $t_kill = hires_now();
	kill 'KILL', $owner_pid;

	my $all_ended = 1;
	$all_ended &&= $_->wait(60) for @waiters;
	ok($all_ended, "round $round: the waiters' sessions end with the crash");
	my $stale = 0;
	for my $w (@waiters)
	{
		$w->poll;
		$stale++ if $w->{out} =~ /fresh=t/;
		note("$w->{name}: rc " . ($w->{rc} // 'running')
			  . " out [$w->{out}] err [$w->{err}]");
	}
	is($stale, 0, "round $round: no waiter came out holding a fresh reservation");
	ok((grep { ($_->{rc} // 0) != 0 && $_->{out} !~ /fresh=/ } @waiters) == 2,
		"round $round: both waiters lost their connection without an answer")
	  or diag(join "\n",
		map { "$_->{name}: rc " . ($_->{rc} // '?') . " out [$_->{out}] err [$_->{err}]" }
		  @waiters);

	my $back = wait_until(60,
		sub { run_sql($node, 'SELECT 1', timeout => 5)->{out} eq '1' });
	ok(defined $back, "round $round: the server accepts connections again");
	push @restart_s, hires_now() - $t_kill;
	ok( $node->log_contains(
			qr/server process \(PID $owner_pid\) was terminated by signal 9/,
			$log_offset),
		"round $round: the server log shows the owner killed and a crash restart");
	$owner->close;

	is(replay_all(\@committed), $before,
		"round $round: every committed key replays unchanged after the crash");

	is( $node->safe_psql('postgres',
			"SELECT fresh, state, attempt FROM idem_get('$k')"),
		'f|in_flight|1',
		"round $round: $k is still in flight (attempt 1) after the restart "
		  . "(owner was $doing)");

	# Three reservers race for the orphaned key: the winner runs the
	# "handler" (a one-second sleep) and commits; the others wait and replay.
	my $script = qq(
SELECT fresh AS got, attempt AS att,
       round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000) AS ms
FROM idem_reserve('$k', 'h-$k', NULL, '20s') \\gset
\\if :got
SELECT pg_sleep(1);
SELECT idem_commit('$k', 'h-$k', 201, '\\x00ff00fe'::bytea, '{"round": $round}');
\\echo RAN attempt=:att ms=:ms
\\else
\\echo REPLAY attempt=:att ms=:ms
\\endif
);
	my @racers = map {
		IdemTest::Client->new($psql, "$cs application_name=racer$round$_",
			$script, name => "racer$_")
	} 1 .. 3;
	$_->wait(60) for @racers;
	my @ran = grep { $_->{out} =~ /^RAN attempt=2 /m } @racers;
	my @replayed = grep { $_->{out} =~ /^REPLAY attempt=2 /m } @racers;
	my $errors = grep { $_->{rc} != 0 || $_->{err} ne '' } @racers;
	my $racer_diag = join "\n",
	  map { "$_->{name}: rc $_->{rc} out [$_->{out}] err [$_->{err}]" } @racers;
	is(scalar @ran, 1, "round $round: exactly one reserver took $k over, with attempt 2")
	  or diag($racer_diag);
	is(scalar @replayed, 2, "round $round: the two others waited and replayed attempt 2")
	  or diag($racer_diag);
	is($errors, 0, "round $round: no reserver saw an error") or diag($racer_diag);
	note($racer_diag);
	if (@ran && $ran[0]->{out} =~ /ms=(\d+)/)
	{
		push @takeover_ms, $1;
		cmp_ok($1, '<', 1000,
			"round $round: the takeover did not wait for a timer ($1 ms)");
	}
	else
	{
		fail("round $round: the takeover did not wait for a timer");
	}

	is( $node->safe_psql('postgres',
			"SELECT fresh, state, status, encode(body, 'hex'), attempt FROM idem_get('$k')"),
		'f|committed|201|00ff00fe|2',
		"round $round: $k is committed once, by attempt 2");

	push @committed,
	  { scope => '', key => $k, status => 201, hex => '00ff00fe' };
	$before = replay_all(\@committed);
}

# The owner terminated cleanly (pg_terminate_backend: SIGTERM, no crash
# restart): the waiters survive, and exactly one of them becomes the owner
# (attempt 2) while the other waits for it and replays.
{
	my $k = 'terminated';
	my $owner = IdemTest::Session->new($psql, "$cs application_name=owner_t",
		name => 'owner_t');
	is($owner->query_safe("SELECT fresh, attempt FROM idem_reserve('$k', 'h-$k')"),
		't|1', 'SIGTERM: the owner reserves the key');
	my $owner_pid = $owner->query_safe('SELECT pg_backend_pid()');
	my $script = qq(
SELECT fresh AS got, attempt AS att FROM idem_reserve('$k', 'h-$k', NULL, '30s') \\gset
\\if :got
SELECT pg_sleep(1);
SELECT idem_commit('$k', 'h-$k', 202, '\\x0102'::bytea);
\\echo RAN attempt=:att
\\else
\\echo REPLAY attempt=:att
\\endif
);
	my @waiters = map {
		IdemTest::Client->new($psql, "$cs application_name=twaiter$_", $script,
			name => "twaiter$_")
	} 1 .. 2;
	ok(defined wait_until(30, sub { lock_waiters($node) == 2 }),
		'SIGTERM: two waiters block on the key');
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($owner_pid)"),
		't', 'SIGTERM: the owner backend is terminated');
	$_->wait(60) for @waiters;
	my $d = join "\n",
	  map { "$_->{name}: rc $_->{rc} out [$_->{out}] err [$_->{err}]" } @waiters;
	is(scalar(grep { $_->{out} =~ /^RAN attempt=2$/m } @waiters),
		1, 'SIGTERM: exactly one waiter became the owner, with attempt 2')
	  or diag($d);
	is(scalar(grep { $_->{out} =~ /^REPLAY attempt=2$/m } @waiters),
		1, 'SIGTERM: the other waited for it and replayed')
	  or diag($d);
	is(scalar(grep { $_->{rc} != 0 || $_->{err} ne '' } @waiters),
		0, 'SIGTERM: no waiter saw an error')
	  or diag($d);
	is( $node->safe_psql('postgres',
			"SELECT state, status, encode(body, 'hex'), attempt FROM idem_get('$k')"),
		'committed|202|0102|2', 'SIGTERM: the key is committed once, by attempt 2');
	$owner->close;
}

diag(sprintf('owner SIGKILL: %d rounds; kill to accepting connections: %s s; '
	  . 'takeover inside idem_reserve: %s ms',
	$ROUNDS, join(', ', map { sprintf '%.2f', $_ } @restart_s),
	join(', ', @takeover_ms)));

$node->stop;
done_testing();
