
# A client's connection cut while it owns a key (not a clean close).
#
# A reservation is freed when its owner's backend exits; the backend exits
# when it notices the connection is gone.  Each case measures the delay from
# the fault to the moment a waiter (blocked in idem_reserve on another
# connection) takes the key over, and checks what the contract promises:
# a takeover with attempt 2 once the server has noticed, and no takeover
# while the owner may still come back.
#
#   A  client process SIGKILLed (TCP), owner idle        -> at once
#   B  client process SIGSTOPped (peer alive, silent)    -> never noticed;
#      after SIGCONT the owner commits normally
#   C  TCP proxy SIGKILLed (connection reset), owner idle -> at once
#   D  proxy SIGKILLed while the owner runs a statement   -> only when the
#      statement ends (client_connection_check_interval = 0, the default)
#   E  as D with client_connection_check_interval = 250ms -> within ~0.25 s
#   F  proxy SIGSTOPped, aggressive server keepalives     -> not noticed:
#      a frozen process's kernel answers keepalive probes; then SIGKILL
#      -> at once
#   G  client SIGSTOPped, idle_session_timeout = 2s       -> ~2 s
#
# The delays are printed at the end (diag).
#
# What decides how long a dead client keeps its key:
#   - The client process dies, or its host closes or resets the connection:
#     an idle backend reads EOF/RST at once and exits; the key is taken over
#     within milliseconds.  A backend busy in a statement notices only when
#     the statement ends, unless client_connection_check_interval (server,
#     PG 14+, settable per session/role/database) is set: then it polls the
#     socket that often during the statement (cases D, E).
#   - The client is alive but silent (process frozen, handler stuck outside
#     the database): nothing at the TCP level changes; the server must not
#     and does not take the key away.  idle_session_timeout (PG 14+) ends a
#     session idle that long (case G), but also the session of a healthy
#     owner whose handler runs outside the database for longer: set it
#     above the slowest handler.  idle_in_transaction_session_timeout does
#     the same for a session idle inside a transaction.
#   - The client's host vanishes (power off, cable pulled, partition): no
#     FIN or RST ever arrives.  An idle backend then waits for TCP
#     keepalives: server settings tcp_keepalives_idle, tcp_keepalives_interval,
#     tcp_keepalives_count (0 = the kernel's defaults, on Linux 7200 s, 75 s,
#     9: about 2 h 11 min), and tcp_user_timeout (for data sent and not
#     acknowledged).  E.g. tcp_keepalives_idle = 30, tcp_keepalives_interval
#     = 10, tcp_keepalives_count = 3 frees the key about 60 s after the
#     host vanished.  These cannot be shown without dropping packets (root);
#     case F shows that they do not fire while the peer's kernel still
#     answers.  On the client side, libpq's keepalives, keepalives_idle,
#     keepalives_interval, keepalives_count and tcp_user_timeout make the
#     client notice a vanished server; they do not free the key sooner.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use IdemTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = idem_node('socket_cut', conf => ["listen_addresses = '127.0.0.1'"]);
my $psql = psql_bin($node);
my $port = $node->port;
my $cs = $node->connstr('postgres');
my $tcp = "host=127.0.0.1 port=$port dbname=postgres";

# Proxies first, so that their processes hold no pipe of a psql session.
my %proxy = map { $_ => start_tcp_proxy($port) } qw(C D E F);
my $via = sub { "host=127.0.0.1 port=$proxy{$_[0]}{port} dbname=postgres" };

my %delay;

# An owner session on $connstr that reserves $key (after the SQL in $pre).
sub owner
{
	my ($connstr, $case, $key, $pre) = @_;
	my $s = IdemTest::Session->new($psql, "$connstr application_name=owner$case",
		name => "owner$case");
	$s->query_safe($pre) if $pre;
	my $got = $s->query_safe("SELECT fresh, attempt FROM idem_reserve('$key')");
	is($got, 't|1', "$case: the owner reserves $key");
	return $s;
}

# Starts a waiter on the key, waits until it blocks, runs $fault, and
# returns (result line, seconds from the fault to the waiter's answer).
sub cut_and_wait
{
	my ($case, $key, $wait, $fault) = @_;
	my $w = IdemTest::Client->new($psql, "$cs application_name=waiter$case",
		"SELECT 'fresh=' || fresh || ' attempt=' || attempt || ' at=' || "
		  . "extract(epoch FROM clock_timestamp()) "
		  . "FROM idem_reserve('$key', NULL, NULL, '$wait');",
		name => "waiter$case");
	my $blocked = wait_until(20, sub { lock_waiters($node) >= 1 });
	ok(defined $blocked, "$case: a waiter blocks on $key");
	my $t0 = hires_now();
	$fault->();
	$w->wait(60);
	my $delay;
	$delay = $1 - $t0 if $w->{out} =~ /at=([\d.]+)/;
	note("$case: waiter rc $w->{rc} out [$w->{out}] err [$w->{err}]");
	return ($w, $delay);
}

sub takeover_ok
{
	my ($case, $w, $delay, $max, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	like($w->{out}, qr/^fresh=true attempt=2 /, "$case: the waiter takes the key over, attempt 2")
	  or diag("rc $w->{rc} out [$w->{out}] err [$w->{err}]");
	ok(defined $delay && $delay < $max,
		sprintf('%s: %s (%.3f s, limit %s s)', $case, $what, $delay // -1, $max));
	$delay{$case} = $delay;
	return;
}

sub still_owned
{
	my ($case, $w, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is($w->{rc} != 0 ? sqlstate_of($w->{err}) : "answered [$w->{out}]",
		'IK409', "$case: $what");
	return;
}

# Default keepalive settings of this machine, as a TCP session sees them.
my $ka = $node->safe_psql('postgres',
	'SHOW tcp_keepalives_idle; SHOW tcp_keepalives_interval; SHOW tcp_keepalives_count',
	connstr => $tcp);
my ($ka_idle, $ka_intvl, $ka_cnt) = split /\n/, $ka;

# A: the client process killed.
{
	my $o = owner($tcp, 'A', 'kA');
	my ($w, $d) = cut_and_wait('A', 'kA', '30s', sub { $o->signal('KILL') });
	takeover_ok('A', $w, $d, 2, 'a killed client frees the key at once');
	$o->close;
}

# B: the client process frozen: the server must not take the key away.
{
	my $o = owner($tcp, 'B', 'kB');
	my ($w) = cut_and_wait('B', 'kB', '3s', sub { $o->signal('STOP') });
	still_owned('B', $w, 'a frozen client keeps its key (IK409 after waiting 3 s)');
	$o->signal('CONT');
	is($o->query_safe(q{SELECT idem_commit('kB', NULL, 200, '\x01'::bytea)}),
		't', 'B: thawed, the owner commits its key');
	is($node->safe_psql('postgres', q{SELECT fresh, state, attempt FROM idem_reserve('kB')}),
		'f|committed|1', 'B: the key replays the commit of attempt 1');
	$o->close;
}

# C: the connection reset under an idle owner.
{
	my $o = owner($via->('C'), 'C', 'kC');
	my ($w, $d) = cut_and_wait('C', 'kC', '30s', sub { stop_tcp_proxy($proxy{C}) });
	takeover_ok('C', $w, $d, 2, 'a cut connection under an idle owner frees the key at once');
	$o->close;
}

# D: the connection cut while the owner runs a statement (the handler's own
# SQL): by default the backend notices only when the statement ends.
my $BUSY = 4;
{
	my $o = owner($via->('D'), 'D', 'kD');
	$o->send("SELECT pg_sleep($BUSY)");
	ok( defined wait_until(10, sub {
			$node->safe_psql('postgres',
				q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ownerD'
				  AND state = 'active' AND query LIKE '%pg_sleep%'}) eq '1';
		}),
		'D: the owner is busy in a statement');
	my $t_busy = hires_now();
	my ($w, $d) = cut_and_wait('D', 'kD', '30s', sub { stop_tcp_proxy($proxy{D}) });
	my $left = $BUSY - (hires_now() - $t_busy - ($d // 0));
	takeover_ok('D', $w, $d, $BUSY + 3,
		'a cut under a busy owner frees the key when the statement ends');
	cmp_ok($d // 0, '>', $left - 1,
		sprintf('D: ... and not before (the statement had %.1f s left)', $left));
	$o->close;
}

# E: the same with client_connection_check_interval.
{
	my $o = owner($via->('E'), 'E', 'kE', "SET client_connection_check_interval = '250ms'");
	$o->send('SELECT pg_sleep(20)');
	ok( defined wait_until(10, sub {
			$node->safe_psql('postgres',
				q{SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ownerE'
				  AND state = 'active' AND query LIKE '%pg_sleep%'}) eq '1';
		}),
		'E: the owner is busy in a statement');
	my $log_offset = -s $node->logfile;
	my ($w, $d) = cut_and_wait('E', 'kE', '30s', sub { stop_tcp_proxy($proxy{E}) });
	takeover_ok('E', $w, $d, 2,
		'client_connection_check_interval = 250ms frees the key during the statement');
	ok($node->log_contains(qr/connection to client lost/, $log_offset),
		'E: the server log says "connection to client lost"');
	$o->close;
}

# F: the proxy frozen; keepalives at 1 s x 2 do not help, its kernel answers.
{
	my $o = owner($via->('F'), 'F', 'kF',
		'SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; '
		  . 'SET tcp_keepalives_count = 2');
	is($o->query_safe('SHOW tcp_keepalives_idle'), '1',
		'F: the owner connection has keepalives at 1 s');
	kill 'STOP', $proxy{F}{pid};
	my ($w) = cut_and_wait('F', 'kF', '5s', sub { });
	still_owned('F', $w,
		'a frozen peer answers keepalives: the key stays owned (IK409 after 5 s)');
	my ($w2, $d) = cut_and_wait('F', 'kF', '30s', sub { stop_tcp_proxy($proxy{F}) });
	takeover_ok('F', $w2, $d, 2, 'the frozen proxy killed: the key is freed at once');
	$o->close;
}

# G: the client frozen; idle_session_timeout ends its idle session.
{
	my $o = owner($tcp, 'G', 'kG', "SET idle_session_timeout = '2s'");
	my $t_idle = hires_now();
	$o->signal('STOP');
	my ($w) = cut_and_wait('G', 'kG', '30s', sub { });
	# measured from the moment the owner went idle
	my $since_idle;
	$since_idle = $1 - $t_idle if $w->{out} =~ /at=([\d.]+)/;
	takeover_ok('G', $w, $since_idle, 5,
		'idle_session_timeout = 2s ends a frozen idle owner and frees its key');
	cmp_ok($since_idle // 0, '>', 1.5, 'G: ... not before the timeout');
	$o->signal('CONT');
	$o->close;
}

$node->stop;
diag(sprintf(
		"socket cut, seconds from the fault to the takeover:\n"
		  . "  A client SIGKILL, idle owner: %.3f\n"
		  . "  B client SIGSTOP: never (key kept; owner committed after SIGCONT)\n"
		  . "  C connection reset (proxy SIGKILL), idle owner: %.3f\n"
		  . "  D reset while the owner runs a %d s statement: %.3f (the statement's end)\n"
		  . "  E same, client_connection_check_interval = 250ms: %.3f\n"
		  . "  F proxy SIGSTOP, keepalives 1 s x 2: never (kernel answers probes); "
		  . "then SIGKILL: %.3f\n"
		  . "  G client SIGSTOP, idle_session_timeout = 2s: %.3f\n"
		  . "  server TCP keepalive defaults here: idle %s s, interval %s s, count %s "
		  . "(a vanished host is noticed after about %s s)",
		$delay{A} // -1, $delay{C} // -1, $BUSY, $delay{D} // -1, $delay{E} // -1,
		$delay{F} // -1, $delay{G} // -1, $ka_idle, $ka_intvl, $ka_cnt,
		($ka_idle =~ /^\d+$/ && $ka_intvl =~ /^\d+$/ && $ka_cnt =~ /^\d+$/)
		? $ka_idle + $ka_intvl * $ka_cnt
		: '?'));

done_testing();
