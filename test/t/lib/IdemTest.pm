
# IdemTest.pm: helpers shared by the fault-injection TAP tests in test/t.
#
#   use FindBin;
#   use lib "$FindBin::RealBin/lib";
#   use IdemTest;
#
#   my $node = idem_node('main', conf => ['restart_after_crash = on']);
#   my $r = run_sql($node, "SELECT * FROM idem_reserve('k')");
#   # $r->{rc}, $r->{out}, $r->{err}, $r->{sqlstate}, $r->{elapsed}
#
#   my $s = IdemTest::Session->new($node->connstr('postgres'), name => 'owner');
#   my ($out, $err) = $s->query("SELECT fresh FROM idem_reserve('k')");
#   $s->send("SELECT pg_sleep(10)");      # do not wait for the answer
#   $s->signal('KILL');                   # kill the psql process
#
# Every psql here runs with VERBOSITY=verbose, so errors carry their
# SQLSTATE ("ERROR:  25006: ..."), which sqlstate_of() extracts.

package IdemTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use Scalar::Util;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

our @EXPORT = qw(idem_node run_sql sql_ok sqlstate_of wait_until
  lock_waiters backend_pid_of hires_now psql_bin pump_all start_tcp_proxy
  stop_tcp_proxy statement_waiters db_now);

# Every live Session and Client, so that any wait moves their data: a
# psql process only gets its input while its harness is pumped.
our @LIVE;

sub register
{
	my ($obj) = @_;
	push @LIVE, $obj;
	Scalar::Util::weaken($LIVE[-1]);
	return;
}

# Moves the data of every live psql process without blocking.
sub pump_all
{
	@LIVE = grep { defined $_ } @LIVE;
	for my $obj (@LIVE)
	{
		next unless defined $obj && $obj->{h};
		eval { $obj->{h}->pump_nb if $obj->{h}->pumpable; };
	}
	return;
}

# The lock class of the extension's key locks (pg_locks.objsubid).
our $LOCK_CLASS = 18756;

sub hires_now { return Time::HiRes::time(); }

sub psql_bin
{
	my ($node) = @_;
	return $node->installed_command('psql');
}

# A started node with the extension created in database postgres.
#   conf => [lines for postgresql.conf], init => {params of init},
#   no_extension => 1
sub idem_node
{
	my ($name, %o) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $o{init} || {} });
	$node->append_conf('postgresql.conf',
		join("\n", "log_min_messages = warning", "lc_messages = 'C'",
			@{ $o{conf} || [] }) . "\n");
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION idempotency')
	  unless $o{no_extension};
	return $node;
}

sub sqlstate_of
{
	my ($err) = @_;
	return undef unless defined $err;
	return $1 if $err =~ /(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):/;
	return undef;
}

# Runs SQL in a fresh psql (ON_ERROR_STOP, verbose errors) and returns
# { rc, out, err, sqlstate, elapsed }.  db => name, connstr => string,
# timeout => seconds (default 60; on timeout rc = -1, timed_out = 1).
sub run_sql
{
	my ($node, $sql, %o) = @_;
	my ($out, $err, $timed_out) = ('', '', 0);
	my $t0 = hires_now();
	my $rc = $node->psql(
		$o{db} // 'postgres', $sql,
		stdout => \$out,
		stderr => \$err,
		(defined $o{connstr} ? (connstr => $o{connstr}) : ()),
		timeout => $o{timeout} // 60,
		timed_out => \$timed_out,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	$rc = -1 if $timed_out;
	return {
		rc => $rc,
		out => $out,
		err => $err,
		sqlstate => sqlstate_of($err),
		elapsed => hires_now() - $t0,
		timed_out => $timed_out,
	};
}

# Like safe_psql, but with verbose errors, and the test fails (not dies)
# with the error when the SQL fails.  Returns stdout.
sub sql_ok
{
	my ($node, $sql, $desc, %o) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $r = run_sql($node, $sql, %o);
	if ($r->{rc} != 0)
	{
		fail($desc);
		diag("SQL: $sql\nrc: $r->{rc}\nstderr: $r->{err}");
		return undef;
	}
	return $r->{out};
}

# Polls a perl condition every 20 ms until it is true or $secs pass.
# Returns the seconds waited, or undef on timeout.
sub wait_until
{
	my ($secs, $cond) = @_;
	my $t0 = hires_now();
	while (1)
	{
		return hires_now() - $t0 if $cond->();
		return undef if hires_now() - $t0 > $secs;
		pump_all();
		usleep(20_000);
	}
}

# How many sessions wait for one of the extension's key locks.
sub lock_waiters
{
	my ($node, $db) = @_;
	my $r = run_sql($node,
		"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
		  . "AND objsubid = $LOCK_CLASS AND NOT granted",
		db => $db // 'postgres', timeout => 10);
	return -1 if $r->{rc} != 0;
	chomp(my $n = $r->{out});
	return $n;
}

# How many sessions whose application_name is LIKE $app_like have been
# in one idem_reserve statement for at least $min_ms milliseconds.  The
# waiters of a lease owner's key sleep inside their statement, holding no
# lock and queueing for none, so pg_locks does not show them; a reserve
# that does not wait returns in well under a millisecond.
sub statement_waiters
{
	my ($node, $app_like, $min_ms, $db) = @_;
	$min_ms //= 50;
	my $r = run_sql($node,
		"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '$app_like' "
		  . "AND state = 'active' AND query LIKE '%idem_reserve%' "
		  . "AND clock_timestamp() - query_start >= interval '$min_ms ms'",
		db => $db // 'postgres', timeout => 10);
	return -1 if $r->{rc} != 0;
	chomp(my $n = $r->{out});
	return $n;
}

# The database server's clock, in seconds since the epoch (the clock that
# leases run on; the same host's as hires_now, read by the server).
sub db_now
{
	my ($node, $db) = @_;
	my $r = run_sql($node, 'SELECT extract(epoch FROM clock_timestamp())',
		db => $db // 'postgres', timeout => 10);
	chomp(my $t = $r->{out});
	return $t;
}

# The backend PID of the session whose application_name is $app.
sub backend_pid_of
{
	my ($node, $app, $db) = @_;
	my $r = run_sql($node,
		"SELECT pid FROM pg_stat_activity WHERE application_name = '$app'",
		db => $db // 'postgres', timeout => 10);
	chomp(my $pid = $r->{out});
	return $pid =~ /^\d+$/ ? $pid : undef;
}

# A TCP proxy in a child process: listens on 127.0.0.1 (a free port) and
# forwards every connection to 127.0.0.1:$target_port.  Killing it with
# SIGKILL cuts every connection through it the way a crashed client host
# process would (the kernel closes both sides); SIGSTOP freezes it (its
# kernel still acknowledges packets and keepalive probes).
# Returns { pid, port }.  Start proxies before psql sessions, so that the
# child holds none of their pipes.
sub start_tcp_proxy
{
	my ($target_port) = @_;
	require IO::Select;
	require IO::Socket::INET;
	require POSIX;
	my $listen = IO::Socket::INET->new(
		LocalAddr => '127.0.0.1',
		LocalPort => 0,
		Listen => 16,
		ReuseAddr => 1) or die "proxy: cannot listen: $!";
	my $port = $listen->sockport;
	my $pid = fork();
	die "proxy: cannot fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $sel = IO::Select->new($listen);
		my %peer;
		while (1)
		{
			for my $fh ($sel->can_read)
			{
				if ($fh == $listen)
				{
					my $c = $listen->accept or next;
					my $srv = IO::Socket::INET->new(
						PeerAddr => '127.0.0.1',
						PeerPort => $target_port);
					if (!$srv)
					{
						close $c;
						next;
					}
					$peer{"$c"} = $srv;
					$peer{"$srv"} = $c;
					$sel->add($c, $srv);
					next;
				}
				my $to = $peer{"$fh"} or next;
				my $n = sysread($fh, my $buf, 65536);
				if (!$n)
				{
					$sel->remove($fh, $to);
					delete @peer{ "$fh", "$to" };
					close $fh;
					close $to;
					next;
				}
				my $off = 0;
				while ($off < $n)
				{
					my $w = syswrite($to, $buf, $n - $off, $off);
					last unless defined $w;
					$off += $w;
				}
			}
		}
		POSIX::_exit(0);
	}
	close $listen;
	return { pid => $pid, port => $port };
}

sub stop_tcp_proxy
{
	my ($proxy) = @_;
	return unless $proxy->{pid};
	kill 'KILL', $proxy->{pid};
	kill 'CONT', $proxy->{pid};
	waitpid($proxy->{pid}, 0);
	delete $proxy->{pid};
	return;
}

package IdemTest::Session;

# A long-lived psql process fed through a pipe: one database session that
# can idle between statements, be signalled, or lose its server.

use strict;
use warnings;
use IPC::Run;
use Test::More;
use Time::HiRes qw(usleep);

my $session_counter = 0;

# new($psql, $connstr, name => ..., on_error_stop => 0|1)
sub new
{
	my ($class, $psql, $connstr, %o) = @_;
	my $self = bless {
		in => '',
		out => '',
		err => '',
		name => $o{name} // 'session' . ++$session_counter,
		n => 0,
	}, $class;
	my @cmd = ($psql, '-XAtq', '-v', 'VERBOSITY=verbose', '-d', $connstr);
	push @cmd, '-v', 'ON_ERROR_STOP=1' if $o{on_error_stop};
	$self->{h} = IPC::Run::start(\@cmd, '<', \$self->{in}, '>', \$self->{out},
		'2>', \$self->{err});
	IdemTest::register($self);
	return $self;
}

sub alive
{
	my ($self) = @_;
	return $self->{h}->pumpable;
}

# Lets IPC::Run move data without blocking.
sub poll
{
	my ($self) = @_;
	eval { $self->{h}->pump_nb if $self->{h}->pumpable; };
	return;
}

# Sends SQL (and a marker) without waiting.  Returns the marker number.
sub send
{
	my ($self, $sql) = @_;
	my $n = ++$self->{n};
	$self->{in} .= "$sql\n;\n\\echo '<<done $n>>'\n\\warn '<<done $n>>'\n";
	$self->poll;
	return $n;
}

# Waits until the statement with marker $n has finished (or the process
# ended, or $secs passed).  Returns (stdout, stderr, finished) of that
# statement, and removes them from the buffers.
sub wait_done
{
	my ($self, $n, $secs) = @_;
	$secs //= 60;
	my $mark = qr/<<done $n>>\n/;
	my $t0 = Time::HiRes::time();
	while (1)
	{
		$self->poll;
		last if $self->{out} =~ $mark && $self->{err} =~ $mark;
		last if !$self->{h}->pumpable;
		last if Time::HiRes::time() - $t0 > $secs;
		IdemTest::pump_all();
		usleep(5_000);
	}
	my $done = ($self->{out} =~ $mark && $self->{err} =~ $mark) ? 1 : 0;
	my ($out, $err);
	if ($done)
	{
		($out, $self->{out}) = split /<<done $n>>\n/, $self->{out}, 2;
		($err, $self->{err}) = split /<<done $n>>\n/, $self->{err}, 2;
	}
	else
	{
		($out, $err) = ($self->{out}, $self->{err});
		$self->{out} = $self->{err} = '';
	}
	$self->{out} //= '';
	$self->{err} //= '';
	$out =~ s/\n\z//;
	return ($out, $err, $done);
}

# Runs SQL and waits for it: (stdout, stderr, finished).
sub query
{
	my ($self, $sql, $secs) = @_;
	my $n = $self->send($sql);
	return $self->wait_done($n, $secs);
}

# Runs SQL that must succeed; dies with the error otherwise.
sub query_safe
{
	my ($self, $sql, $secs) = @_;
	my ($out, $err, $done) = $self->query($sql, $secs);
	die "$self->{name}: query did not finish: $sql\nstderr: $err" unless $done;
	die "$self->{name}: query failed: $sql\nstderr: $err" if $err ne '';
	return $out;
}

sub signal
{
	my ($self, $sig) = @_;
	$self->{h}->signal($sig);
	return;
}

# Ends the psql process: \q, then a kill if it does not go.
sub close
{
	my ($self) = @_;
	return unless $self->{h};
	if ($self->{h}->pumpable)
	{
		$self->{in} .= "\\q\n";
		my $t0 = Time::HiRes::time();
		# (psql may have gone already: a write to it then fails)
		while ($self->{h}->pumpable && Time::HiRes::time() - $t0 < 5)
		{
			last unless eval { $self->{h}->pump_nb; 1 };
			usleep(5_000);
		}
	}
	eval { $self->{h}->kill_kill(grace => 1); };
	eval { $self->{h}->finish; };
	delete $self->{h};
	return;
}

sub DESTROY
{
	my ($self) = @_;
	local ($@, $?);
	if ($self->{h})
	{
		eval { $self->{h}->kill_kill(grace => 0); };
		eval { $self->{h}->finish; };
	}
	return;
}

package IdemTest::Client;

# A one-shot psql process running a script to its end in the background:
#   my $c = IdemTest::Client->new($psql, $connstr, $script, name => 'w1');
#   $c->poll; $c->finished; $c->{out}; $c->{err}; $c->{rc}

use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Utils ();
use Time::HiRes qw(usleep);

my $client_counter = 0;

sub new
{
	my ($class, $psql, $connstr, $script, %o) = @_;
	my $self = bless {
		out => '',
		err => '',
		name => $o{name} // 'client',
		started => Time::HiRes::time(),
	}, $class;

	# The script goes to a file, so that psql reads it at its own pace and
	# nothing breaks when it stops early.
	$self->{file} = sprintf '%s/client-%d-%d.sql',
	  PostgreSQL::Test::Utils::tempdir_short(), $$, ++$client_counter;
	open my $fh, '>', $self->{file} or die "cannot write $self->{file}: $!";
	print $fh $script;
	close $fh;

	my @cmd = ($psql, '-XAtq', '-v', 'VERBOSITY=verbose', '-d', $connstr,
		'-f', $self->{file});
	push @cmd, '-v', 'ON_ERROR_STOP=1' unless $o{keep_going};
	$self->{h} = IPC::Run::start(\@cmd, '<', '/dev/null', '>', \$self->{out},
		'2>', \$self->{err});
	IdemTest::register($self);
	return $self;
}

# Moves data; when the process has ended, reaps it and sets rc and ended.
sub poll
{
	my ($self) = @_;
	return 1 if defined $self->{rc};
	if ($self->{h}->pumpable)
	{
		eval { $self->{h}->pump_nb; };
		return 0 if $self->{h}->pumpable;
	}
	eval { $self->{h}->finish; };
	$self->{rc} = $self->{h}->result(0) // -1;
	$self->{ended} = Time::HiRes::time();
	return 1;
}

sub finished { my ($self) = @_; return $self->poll; }

# Waits for the end, at most $secs.  True when it ended.
sub wait
{
	my ($self, $secs) = @_;
	my $t0 = Time::HiRes::time();
	until ($self->poll)
	{
		return 0 if Time::HiRes::time() - $t0 > $secs;
		IdemTest::pump_all();
		usleep(5_000);
	}
	return 1;
}

sub signal
{
	my ($self, $sig) = @_;
	$self->{h}->signal($sig);
	return;
}

sub kill
{
	my ($self) = @_;
	eval { $self->{h}->kill_kill(grace => 0); };
	$self->poll;
	return;
}

sub DESTROY
{
	my ($self) = @_;
	local ($@, $?);
	if ($self->{h} && !defined $self->{rc})
	{
		eval { $self->{h}->kill_kill(grace => 0); };
		eval { $self->{h}->finish; };
	}
	return;
}

1;
