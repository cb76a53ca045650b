
# Lease owners under faults: the lease alone decides when the owner is gone.
#
# Two nodes: one with the module in shared_preload_libraries (waiters of a
# lease owner's key sleep on a condition variable in shared memory) and one
# without (they read the record again, backing off from 1 to 8 ms).
#
#   a  A lease owner's client is killed (kill -9 of its psql: the backend
#      sees the connection close and exits), or its backend is ended with
#      pg_terminate_backend.  The key stays the owner's until the lease
#      runs out: reservers with wait_timeout 0 get IK409 before
#      lease_expires_at, and the first reserve after it takes the key over
#      at once (fresh, attempt 2); on a second key, two waiters that began
#      waiting before the expiry: one takes the key over within 150 ms after
#      the lease end (never before), the other waits for it and replays
#      its commit.  The dead owner's token is then fenced.
#   b  A lease owner's client is frozen (SIGSTOP) past its lease, its
#      session still connected; another request takes the key over and
#      commits.  After SIGCONT the frozen client's commit (queued while it
#      was stopped), release and extend are fenced (IK409), and the stored
#      response is the new owner's, byte for byte.
#   c  A restart (immediate, then fast) does not end a live lease: the key
#      is in flight under the same token and lease (IK409 for others), and
#      the token reserves it again (same attempt) and commits it, attempt 1.
#      A session-owned reservation held across the same restart is taken
#      over (attempt 2).
#   d  DISCARD ALL and pg_advisory_unlock_all() in the session that made a
#      lease reservation change nothing for it: still in flight, same lease,
#      IK409 for others, a waiter keeps waiting, and the token commits it.
#      (A session-owned key of the same session is freed by DISCARD ALL.)
#   e  Waking: eight waiters blocked on a lease owner's key are woken by its
#      commit (all replay it) and by its release (one becomes the owner, the
#      others replay its commit), each within 1 s of the commit or release
#      statement's start, and none before it (a correctness bound, not a
#      benchmark).  The latencies printed run from the commit returning (the
#      server clock read by the owner's next statement) to the waiter's
#      reserve returning (read in its statement): negative when a waiter
#      had its answer before the owner's session got to its next statement.
# a and e run on both nodes, b, c and d on the preloaded one.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $LEASE = 3;             # seconds: the lease of the killed owners (a)
my $TAKEOVER_BOUND = 0.15; # seconds after the lease end (a)
my $WAKE_BOUND = 1.0;      # seconds from commit or release to a waiter (e)
my $WAITERS = 8;

my $preloaded = idem_node('lease_preload',
	conf => [ "shared_preload_libraries = 'idempotency'", 'max_connections = 60' ]);
my $plain = idem_node('lease_plain', conf => ['max_connections = 60']);
my $psql = psql_bin($preloaded);

# lease_probe(key, token): one reserve with wait_timeout 0 and a lease, as
# "t0|outcome|attempt|t1": the server clock before and after it, and
# 'fresh', 'committed', 'in_flight' or the SQLSTATE of its error.
my $PROBE = q{
CREATE FUNCTION lease_probe(k text, tok text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
	t0 numeric := extract(epoch FROM clock_timestamp());
	r idem_reservation;
	st text;
BEGIN
	SELECT * INTO r FROM idem_reserve(k, 'h-' || k, NULL, '0', '', tok, '30s');
	RETURN format('%s|%s|%s|%s', t0,
				  CASE WHEN r.fresh THEN 'fresh' ELSE r.state END, r.attempt,
				  extract(epoch FROM clock_timestamp()));
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE;
	RETURN format('%s|%s||%s', t0, st, extract(epoch FROM clock_timestamp()));
END
$$;
};
$_->safe_psql('postgres', $PROBE) for $preloaded, $plain;

is($preloaded->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'idempotency', 'one node has the module preloaded');
is($plain->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'', 'the other has not');

my %latency;    # label => [ seconds from the commit or release to each waiter ]

# A reserve with a lease by a Session: "fresh|attempt|lease end (epoch)".
sub lease_reserve
{
	my ($s, $k, $tok, $lease) = @_;
	return $s->query_safe(
		"SELECT r.fresh, r.attempt, extract(epoch FROM r.lease_expires_at) "
		  . "FROM idem_reserve('$k', 'h-$k', NULL, NULL, '', '$tok', '$lease') r");
}

sub fmt_ms { return join ', ', map { sprintf '%.1f', $_ * 1000 } @_; }

# ---- a: a lease owner killed --------------------------------------------

sub lease_owner_killed
{
	my ($node, $label, $how) = @_;
	my $cs = $node->connstr('postgres');
	my ($ka, $kb) = ("ka-$label", "kb-$label");
	my $app = "lowner-$label";
	my $tok = "tok-$label";
	my $t = "a $label ($how)";

	my $owner = IdemTest::Session->new($psql, "$cs application_name=$app", name => $app);
	my ($fa, $aa, $end_a) = split /\|/, lease_reserve($owner, $ka, $tok, "${LEASE}s");
	my ($fb, $ab, $end_b) = split /\|/, lease_reserve($owner, $kb, $tok, "${LEASE}s");
	is("$fa|$aa|$fb|$ab", 't|1|t|1', "$t: the owner reserves two keys with a lease of $LEASE s");
	my $backend = backend_pid_of($node, $app);

	if ($how eq 'kill -9')
	{
		$owner->signal('KILL');
	}
	else
	{
		is($node->safe_psql('postgres', "SELECT pg_terminate_backend($backend)"),
			't', "$t: the owner's backend is terminated");
	}
	ok(defined wait_until(10, sub { !defined backend_pid_of($node, $app) }),
		"$t: the owner's session is gone");

	my $script = q{
SELECT fresh AS got, attempt AS att, extract(epoch FROM clock_timestamp()) AS t,
       coalesce(encode(body, 'hex'), '-') AS b
  FROM idem_reserve('%KEY%', 'h-%KEY%', NULL, '30s', '', 'tok-w%W%', '30s') \gset
\if :got
SELECT idem_commit('%KEY%', 'h-%KEY%', 201, '\x00ff0%W%'::bytea, '{"by": "w%W%"}', '', 'tok-w%W%');
\echo RAN attempt=:att t=:t
\else
\echo REPLAY attempt=:att t=:t body=:b
\endif
};
	my @waiters = map {
		my $s = $script =~ s/%KEY%/$kb/gr =~ s/%W%/$_/gr;
		IdemTest::Client->new($psql, "$cs application_name=lw-$label-$_", $s,
			name => "lw-$label-$_")
	} 1 .. 2;
	ok(defined wait_until(10, sub { statement_waiters($node, "lw-$label-%") == 2 }),
		"$t: two waiters block on the second key");
	cmp_ok(db_now($node), '<', $end_b - 0.5,
		"$t: ... and began waiting well before the lease end");

	# Probes with wait_timeout 0 every 100 ms: the first key until one
	# takes it over, the second until shortly before its lease end (the
	# waiters must be the ones to take it).
	my $mon = IdemTest::Session->new($psql, $cs, name => "mon-$label");
	my (@pa, @pb);
	my $stop = hires_now() + $LEASE + 10;
	while (hires_now() < $stop)
	{
		push @pa, [ split /\|/, $mon->query_safe("SELECT lease_probe('$ka', 'probe-$label')") ];
		last if $pa[-1][1] eq 'fresh';
		push @pb, [ split /\|/, $mon->query_safe("SELECT lease_probe('$kb', 'probe-$label')") ]
		  if $pa[-1][3] < $end_b - 0.4;
		pump_all();
		usleep(100_000);
	}
	my $pdiag = join "\n", 'first key:', (map { join '|', @$_ } @pa),
	  'second key:', (map { join '|', @$_ } @pb), sprintf('lease ends %s, %s', $end_a, $end_b);

	my @before = grep { $_->[3] < $end_a } @pa;
	my @after = grep { $_->[0] >= $end_a } @pa;
	cmp_ok(scalar @before, '>=', 10, "$t: probes ran while the lease lived")
	  or diag($pdiag);
	is(scalar(grep { $_->[1] ne 'IK409' } @before), 0,
		"$t: before lease_expires_at every reserve with wait 0 got IK409 (not taken over)")
	  or diag($pdiag);
	ok(@after && $after[0][1] eq 'fresh' && $after[0][2] == 2,
		"$t: the first reserve after the lease end took the key over (fresh, attempt 2)")
	  or diag($pdiag);
	ok(@after && $after[0][3] - $after[0][0] < 0.5,
		"$t: ... at once, without waiting")
	  or diag($pdiag);
	is(scalar(grep { $_->[1] ne 'IK409' } @pb), 0,
		"$t: on the second key too, IK409 while the lease lived (" . scalar(@pb) . ' probes)')
	  or diag($pdiag);

	# The dead owner's token is fenced; the new owner commits.
	my $r = run_sql($node,
		"SELECT idem_commit('$ka', 'h-$ka', 200, '\\xdead'::bytea, '{}', '', '$tok')");
	is($r->{sqlstate}, 'IK409', "$t: the dead owner's token is fenced") or diag($r->{err});
	is($node->safe_psql('postgres',
			"SELECT idem_commit('$ka', 'h-$ka', 200, '\\xbeef'::bytea, '{}', '', 'probe-$label')"),
		't', "$t: the new owner of the first key commits");

	my $done = 1;
	$done &&= $_->wait(20) for @waiters;
	ok($done, "$t: both waiters returned");
	my $wdiag = join "\n",
	  map { "$_->{name}: rc " . ($_->{rc} // '?') . " out [$_->{out}] err [$_->{err}]" } @waiters;
	my @ran = grep { $_->{out} =~ /^RAN attempt=2 t=/m } @waiters;
	my @rep = grep { $_->{out} =~ /^REPLAY attempt=2 t=\S+ body=00ff0\d$/m } @waiters;
	is(scalar @ran, 1, "$t: exactly one waiter took the second key over (attempt 2)")
	  or diag($wdiag);
	is(scalar @rep, 1, "$t: the other waited for it and replayed its commit")
	  or diag($wdiag);
	if (@ran == 1 && @rep == 1)
	{
		my ($t_ran) = $ran[0]->{out} =~ / t=(\S+)/;
		my ($t_rep) = $rep[0]->{out} =~ / t=(\S+)/;
		my $after_end = $t_ran - $end_b;
		ok($after_end >= 0 && $after_end < $TAKEOVER_BOUND,
			sprintf('%s: the takeover came %.1f ms after the lease end (within %d ms, not before)',
				$t, $after_end * 1000, $TAKEOVER_BOUND * 1000))
		  or diag($wdiag);
		my ($n) = $ran[0]->{name} =~ /(\d)$/;
		like($rep[0]->{out}, qr/body=00ff0$n$/m,
			"$t: the replay is the new owner's response");
		push @{ $latency{"takeover at lease end ($label)"} }, $after_end;
		note(sprintf '%s: takeover %.1f ms after the lease end, replay %.1f ms after it',
			$t, $after_end * 1000, ($t_rep - $end_b) * 1000);
	}
	else
	{
		fail("$t: the takeover came within the bound after the lease end");
		fail("$t: the replay is the new owner's response");
	}
	is($node->safe_psql('postgres', "SELECT state, attempt FROM idem_get('$kb')"),
		'committed|2', "$t: the second key is committed once, by attempt 2");

	$mon->close;
	$owner->close;
	return;
}

lease_owner_killed($preloaded, 'pre-kill', 'kill -9');
lease_owner_killed($preloaded, 'pre-term', 'pg_terminate_backend');
lease_owner_killed($plain, 'plain-kill', 'kill -9');
lease_owner_killed($plain, 'plain-term', 'pg_terminate_backend');

# ---- b: a lease owner frozen past its lease -----------------------------

{
	my $node = $preloaded;
	my $cs = $node->connstr('postgres');
	my $k = 'stopped';
	my $slow = IdemTest::Session->new($psql, "$cs application_name=slow", name => 'slow');
	my ($f, $a, $end) = split /\|/, lease_reserve($slow, $k, 'tok-slow', '1s');
	is("$f|$a", 't|1', 'b: the owner reserves with a lease of 1 s');
	my $backend = backend_pid_of($node, 'slow');

	$slow->signal('STOP');
	# What it will do once it runs again: commit its own response.
	my $n = $slow->send(
		"SELECT idem_commit('$k', 'h-$k', 500, '\\x0bad'::bytea, '{\"by\": \"slow\"}', '', 'tok-slow')");
	my $r = run_sql($node, "SELECT lease_probe('$k', 'tok-other')");
	like($r->{out}, qr/\|IK409\|/, 'b: while its lease lives, the stopped owner keeps the key');
	wait_until(10, sub { db_now($node) > $end + 0.05 });

	is(backend_pid_of($node, 'slow'), $backend,
		"b: past the lease the stopped owner's session is still connected");
	my @bytes = map { ($_ * 37 + 11) % 256 } 0 .. 299;
	my $hex = join '', map { sprintf '%02x', $_ } @bytes;
	my $headers = '{"by": "new", "x": [1, "é"]}';
	is( $node->safe_psql('postgres',
			"SELECT fresh, attempt FROM idem_reserve('$k', 'h-$k', NULL, '0', '', 'tok-new', '30s')"),
		't|2', 'b: another request takes the key over (attempt 2)');
	is( $node->safe_psql('postgres',
			"SELECT idem_commit('$k', 'h-$k', 201, '\\x$hex'::bytea, '$headers', '', 'tok-new')"),
		't', 'b: ... and commits');

	$slow->signal('CONT');
	my ($out, $err, $done) = $slow->wait_done($n, 20);
	ok($done, 'b: the owner runs again after SIGCONT');
	is(sqlstate_of($err), 'IK409', "b: its late commit is fenced (IK409)")
	  or diag("out [$out] err [$err]");
	($out, $err) = $slow->query("SELECT idem_release('$k', '', 'tok-slow')");
	is(sqlstate_of($err), 'IK409', 'b: so is its release') or diag($err);
	($out, $err) = $slow->query("SELECT idem_extend('$k', 'tok-slow')");
	is(sqlstate_of($err), 'IK409', 'b: and its extend') or diag($err);
	is( $node->safe_psql('postgres',
			"SELECT state, status, encode(body, 'hex'), headers::jsonb::text, attempt FROM idem_get('$k')"),
		$node->safe_psql('postgres', "SELECT 'committed|201|$hex|' || '$headers'::jsonb::text || '|2'"),
		"b: the stored response is the new owner's, byte for byte");
	is( $slow->query_safe(
			"SELECT fresh, status, encode(body, 'hex') = '$hex', attempt FROM idem_reserve('$k', 'h-$k', NULL, '0', '', 'tok-slow')"),
		'f|201|t|2', 'b: the late owner reserving again gets that response to replay');
	$slow->close;
}

# ---- c: restarts do not end a live lease ---------------------------------

for my $mode ('immediate', 'fast')
{
	my $node = $preloaded;
	my $cs = $node->connstr('postgres');
	my ($kl, $ks) = ("restart-lease-$mode", "restart-session-$mode");
	my $tok = "tok-$mode";
	my $out = $node->safe_psql('postgres',
		"SELECT r.fresh, r.attempt, extract(epoch FROM r.lease_expires_at) "
		  . "FROM idem_reserve('$kl', 'h-$kl', NULL, NULL, '', '$tok', '60s') r");
	my ($f, $a, $end) = split /\|/, $out;
	is("$f|$a", 't|1', "c $mode: a lease owner reserves (lease 60 s) from a session that then ends");
	my $holder = IdemTest::Session->new($psql, $cs, name => "holder-$mode");
	is($holder->query_safe("SELECT fresh, attempt FROM idem_reserve('$ks', 'h-$ks')"),
		't|1', "c $mode: a session owner holds another key");

	$node->stop($mode);
	$node->start;
	$holder->close;

	my $r = run_sql($node, "SELECT lease_probe('$kl', 'tok-other')");
	like($r->{out}, qr/\|IK409\|/, "c $mode: after the restart the lease owner's key is still in flight (IK409)")
	  or diag("$r->{out} $r->{err}");
	$r = run_sql($node, "SELECT * FROM idem_reserve('$kl', 'h-$kl', NULL, '0')");
	is($r->{sqlstate}, 'IK409', "c $mode: ... for a reserve without a token too");
	is( $node->safe_psql('postgres',
			"SELECT state, attempt, extract(epoch FROM lease_expires_at) = $end FROM idem_get('$kl')"),
		'in_flight|1|t', "c $mode: same attempt, same lease");
	is( $node->safe_psql('postgres',
			"SELECT fresh, attempt FROM idem_reserve('$kl', 'h-$kl', NULL, '0', '', '$tok')"),
		't|1', "c $mode: the token reserves it again (re-entrant, attempt 1)");
	is( $node->safe_psql('postgres',
			"SELECT idem_commit('$kl', 'h-$kl', 200, '\\x0102'::bytea, '{}', '', '$tok')"),
		't', "c $mode: the token commits it");
	is( $node->safe_psql('postgres',
			"SELECT state, status, encode(body, 'hex'), attempt FROM idem_get('$kl')"),
		'committed|200|0102|1', "c $mode: committed by attempt 1");
	is( $node->safe_psql('postgres',
			"SELECT fresh, attempt FROM idem_reserve('$ks', 'h-$ks', NULL, '0')"),
		't|2', "c $mode: the session-owned key IS taken over after the restart (attempt 2)");
	$node->safe_psql('postgres', "SELECT idem_release('$ks')");
}

# ---- d: DISCARD ALL and pg_advisory_unlock_all() -------------------------

{
	my $node = $preloaded;
	my $cs = $node->connstr('postgres');
	my ($kl, $ks) = ('discard-lease', 'discard-session');
	my $s = IdemTest::Session->new($psql, $cs, name => 'discarder');
	my ($f, $a, $end) = split /\|/, lease_reserve($s, $kl, 'tok-d', '30s');
	is("$f|$a", 't|1', 'd: a session makes a lease reservation');
	is($s->query_safe("SELECT fresh, attempt FROM idem_reserve('$ks', 'h-$ks')"),
		't|1', 'd: ... and a session-owned one');
	my $waiter = IdemTest::Client->new($psql, "$cs application_name=dwaiter",
		"SELECT fresh, state, status, encode(body, 'hex'), attempt "
		  . "FROM idem_reserve('$kl', 'h-$kl', NULL, '30s', '', 'tok-dw', '30s');\n",
		name => 'dwaiter');
	ok(defined wait_until(10, sub { statement_waiters($node, 'dwaiter') == 1 }),
		'd: a waiter blocks on the lease-owned key');

	my $state = "SELECT state, attempt, extract(epoch FROM lease_expires_at) = $end FROM idem_get('$kl')";
	for my $stmt ('DISCARD ALL', 'SELECT pg_advisory_unlock_all()')
	{
		$s->query_safe($stmt);
		my $r = run_sql($node, "SELECT lease_probe('$kl', 'tok-other')");
		like($r->{out}, qr/\|IK409\|/, "d: after $stmt the lease-owned key is still in flight (IK409)");
		is($node->safe_psql('postgres', $state), 'in_flight|1|t',
			"d: ... same attempt, same lease");
		usleep(200_000);
		ok(!$waiter->finished, "d: ... and the waiter still waits");
	}
	is( $node->safe_psql('postgres',
			"SELECT fresh, attempt FROM idem_reserve('$ks', 'h-$ks', NULL, '0')"),
		't|2', 'd: (the session-owned key was freed by DISCARD ALL: taken over)');
	is( $s->query_safe(
			"SELECT fresh, attempt FROM idem_reserve('$kl', 'h-$kl', NULL, '0', '', 'tok-d')"),
		't|1', 'd: the token reserves its key again in that session (same attempt)');
	is( $s->query_safe(
			"SELECT idem_commit('$kl', 'h-$kl', 200, '\\x0d'::bytea, '{}', '', 'tok-d')"),
		't', 'd: and commits it');
	ok($waiter->wait(10), 'd: the waiter returns');
	is($waiter->{out} =~ s/\n\z//r, 'f|committed|200|0d|1', 'd: ... replaying that commit')
	  or diag($waiter->{err});
	$node->safe_psql('postgres', "SELECT idem_release('$ks')");
	$s->close;
}

# ---- e: waiters woken by commit and by release ---------------------------

sub wake
{
	my ($node, $label, $desc) = @_;
	my $cs = $node->connstr('postgres');
	my $t = "e $desc";

	# by a commit: every waiter replays it
	my $k = "wake-commit-$label";
	my $owner = IdemTest::Session->new($psql, $cs, name => "wowner-$label");
	lease_reserve($owner, $k, 'tok-own', '30s');
	my @w = map {
		IdemTest::Client->new($psql, "$cs application_name=wc-$label-$_",
			"SELECT fresh, state, attempt, coalesce(encode(body, 'hex'), '-'), "
			  . "extract(epoch FROM clock_timestamp()) "
			  . "FROM idem_reserve('$k', 'h-$k', NULL, '30s', '', 'tok-w$_', '30s');\n",
			name => "wc-$label-$_")
	} 1 .. $WAITERS;
	ok(defined wait_until(20, sub { statement_waiters($node, "wc-$label-%", 100) == $WAITERS }),
		"$t: $WAITERS waiters block on a lease owner's key");
	my ($t0, $ok, $t1) = split /\n|\|/, $owner->query_safe(
		"SELECT extract(epoch FROM clock_timestamp()), idem_commit('$k', 'h-$k', 200, '\\xc0ffee'::bytea, '{}', '', 'tok-own');\n"
		  . "SELECT extract(epoch FROM clock_timestamp())");
	is($ok, 't', "$t: the owner commits");
	my $done = 1;
	$done &&= $_->wait(20) for @w;
	ok($done, "$t: every waiter returned");
	my @lat;
	my $bad = 0;
	for my $c (@w)
	{
		my ($fresh, $st, $att, $body, $tw) = split /\|/, $c->{out} =~ s/\n\z//r;
		if (($fresh // '') ne 'f' || $st ne 'committed' || $att != 1 || $body ne 'c0ffee' || $tw < $t0)
		{
			$bad++;
			diag("$c->{name}: out [$c->{out}] err [$c->{err}] (commit at $t0)");
			next;
		}
		push @lat, $tw - $t1;
		cmp_ok($tw - $t0, '<', $WAKE_BOUND,
			sprintf('%s: %s replays the commit %.1f ms after it returned', $t, $c->{name},
				($tw - $t1) * 1000));
	}
	is($bad, 0, "$t: every waiter replayed the commit, none before it began");
	$latency{"woken by commit ($desc)"} = \@lat;

	# by a release: one waiter becomes the owner, the others replay its
	# commit
	$k = "wake-release-$label";
	lease_reserve($owner, $k, 'tok-own', '30s');
	my $script = q{
SELECT fresh AS got, attempt AS att, extract(epoch FROM clock_timestamp()) AS t,
       coalesce(encode(body, 'hex'), '-') AS b
  FROM idem_reserve('%KEY%', 'h-%KEY%', NULL, '30s', '', 'tok-w%W%', '30s') \gset
\if :got
SELECT extract(epoch FROM clock_timestamp()) AS c0 \gset
SELECT idem_commit('%KEY%', 'h-%KEY%', 201, '\x0%W%'::bytea, '{}', '', 'tok-w%W%') AS committed \gset
SELECT extract(epoch FROM clock_timestamp()) AS c1 \gset
\echo RAN attempt=:att t=:t c0=:c0 c1=:c1 committed=:committed
\else
\echo REPLAY attempt=:att t=:t body=:b
\endif
};
	@w = map {
		IdemTest::Client->new($psql, "$cs application_name=wr-$label-$_",
			$script =~ s/%KEY%/$k/gr =~ s/%W%/$_/gr, name => "wr-$label-$_")
	} 1 .. $WAITERS;
	ok(defined wait_until(20, sub { statement_waiters($node, "wr-$label-%", 100) == $WAITERS }),
		"$t: $WAITERS waiters block on another key of the owner");
	($t0, $ok, $t1) = split /\n|\|/, $owner->query_safe(
		"SELECT extract(epoch FROM clock_timestamp()), idem_release('$k', '', 'tok-own');\n"
		  . "SELECT extract(epoch FROM clock_timestamp())");
	is($ok, 't', "$t: the owner releases it");
	$done = 1;
	$done &&= $_->wait(20) for @w;
	ok($done, "$t: every waiter returned");
	my $wdiag = join "\n",
	  map { "$_->{name}: rc " . ($_->{rc} // '?') . " out [$_->{out}] err [$_->{err}]" } @w;
	my @ran = grep { $_->{out} =~ /^RAN attempt=1 .*committed=t$/m } @w;
	is(scalar @ran, 1, "$t: exactly one waiter became the owner and committed") or diag($wdiag);
	my @rel_lat;
	if (@ran == 1)
	{
		my ($tr, $c0, $c1) = $ran[0]->{out} =~ / t=(\S+) c0=(\S+) c1=(\S+)/;
		my ($n) = $ran[0]->{name} =~ /(\d+)$/;
		cmp_ok($tr - $t0, '<', $WAKE_BOUND,
			sprintf('%s: the new owner got the key %.1f ms after the release returned',
				$t, ($tr - $t1) * 1000));
		ok($tr >= $t0, "$t: ... not before the release began");
		push @rel_lat, $tr - $t1;
		my @rep = grep { $_->{out} =~ /^REPLAY attempt=1 t=\S+ body=0$n$/m } @w;
		is(scalar @rep, $WAITERS - 1, "$t: the other waiters replayed its commit") or diag($wdiag);
		my @late = grep {
			my ($tw) = $_->{out} =~ / t=(\S+)/;
			$tw - $c0 >= $WAKE_BOUND || $tw < $c0
		} @rep;
		is(scalar @late, 0,
			"$t: ... each within " . $WAKE_BOUND * 1000 . " ms after that commit, none before it")
		  or diag($wdiag);
		$latency{"woken by release, the new owner ($desc)"} = \@rel_lat;
		$latency{"woken by the new owner's commit ($desc)"} =
		  [ map { ($_->{out} =~ / t=(\S+)/)[0] - $c1 } @rep ];
	}
	else
	{
		fail("$t: the new owner got the key within the bound") for 1 .. 2;
		fail("$t: the other waiters replayed its commit") for 1 .. 2;
	}
	$owner->close;
	return;
}

wake($preloaded, 'pre', 'preloaded');
wake($plain, 'plain', 'not preloaded');

for my $what (sort keys %latency)
{
	my @l = sort { $a <=> $b } @{ $latency{$what} };
	next unless @l;
	diag(sprintf '%s: %d waiters, median %.1f ms, max %.1f ms', $what, scalar @l,
		$l[ $#l / 2 ] * 1000, $l[-1] * 1000);
}

$_->stop for $preloaded, $plain;
done_testing();
