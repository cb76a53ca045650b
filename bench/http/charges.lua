-- charges.lua: wrk script for the HTTP example (bench/http/run.sh).
--
--   wrk ... -s charges.lua http://127.0.0.1:PORT -- MODE TAG
--
-- MODE unique:      POST /charges, a new Idempotency-Key per request
--                   (TAG-<wrk thread>-<n>): every request makes a charge
-- MODE replay:      POST /charges, always the key TAG-replay: the first
--                   request makes the charge, every other one is a replay
-- MODE unprotected: POST /charges-unprotected, no key: the same insert
--                   without the middleware
--
-- The same body for all three.  done() prints one machine-readable line:
--   RESULT requests=N seconds=S rps=R mean_us=.. p50_us=.. p90_us=.. p99_us=..
--          max_us=.. socket_errors=.. non2xx=..

local threads = {}

function setup(thread)
	thread:set("thread_no", #threads + 1)
	table.insert(threads, thread)
end

local mode, tag, counter = "unique", "wrk", 0

function init(args)
	mode = args[1] or "unique"
	tag = args[2] or "wrk"
	wrk.method = "POST"
	wrk.body = '{"amount": 1000, "currency": "usd", "description": "wrk"}'
	wrk.headers["Content-Type"] = "application/json"
	wrk.headers["X-Tenant"] = "bench"
	if mode == "unprotected" then
		wrk.path = "/charges-unprotected"
	else
		wrk.path = "/charges"
	end
	if mode == "replay" then
		wrk.headers["Idempotency-Key"] = tag .. "-replay"
	end
	if mode ~= "unique" then
		-- no request function: wrk sends its prebuilt request, as fast as
		-- it can be
		request = nil
	end
end

function request()
	counter = counter + 1
	wrk.headers["Idempotency-Key"] = string.format("%s-%d-%d", tag, thread_no, counter)
	return wrk.format()
end

function done(summary, latency, requests)
	local e = summary.errors
	local seconds = summary.duration / 1e6
	io.write(string.format(
		"RESULT requests=%d seconds=%.2f rps=%.1f mean_us=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d socket_errors=%d non2xx=%d\n",
		summary.requests, seconds, summary.requests / seconds, latency.mean,
		latency:percentile(50), latency:percentile(90), latency:percentile(99),
		latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
