set terminal pngcairo size 1200,420 font "sans,10"
set grid ytics
set key top left
set style fill solid 0.85 border -1
set output "/work/main/bench/results/throughput.png"
set multiplot layout 1,3 title "Throughput per implementation (pgbench -c 8, mean of rounds)"
unset key
set title "1. reserve+commit (logged)"
set ylabel "transactions / s"
set yrange [0:*]
set boxwidth 0.6
set xtics rotate by 0
plot "/work/main/bench/results/data/tps-fresh-logged.dat" using 1:3:4:xtic(2) with boxes lc rgb variable, "" using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7
unset key
set title "6. reserve+commit (unlogged)"
set ylabel "transactions / s"
set yrange [0:*]
set boxwidth 0.6
set xtics rotate by 0
plot "/work/main/bench/results/data/tps-fresh-unlogged.dat" using 1:3:4:xtic(2) with boxes lc rgb variable, "" using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7
unset key
set title "2. replay"
set ylabel "transactions / s"
set yrange [0:*]
set boxwidth 0.6
set xtics rotate by 0
plot "/work/main/bench/results/data/tps-replay-logged.dat" using 1:3:4:xtic(2) with boxes lc rgb variable, "" using 1:3:(sprintf("%.0f", $3)) with labels offset 0,0.7
unset multiplot
set output "/work/main/bench/results/latency.png"
set multiplot layout 1,3 title "Latency by percentile (per pgbench transaction)"
set key top left
set logscale y
set ylabel "ms"
set xtics ("50%%" 0.301, "90%%" 1, "99%%" 2, "99.9%%" 3, "99.99%%" 4)
set xrange [0:4]
set yrange [*:*]
set title "1. reserve+commit (logged)"
plot "/work/main/bench/results/data/curve-fresh-logged-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/curve-fresh-logged-ext_async.dat" using 1:2 with lines lw 2 lc rgb "#17becf" title "ext async", "/work/main/bench/results/data/curve-fresh-logged-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/curve-fresh-logged-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw", "/work/main/bench/results/data/curve-fresh-logged-redis.dat" using 1:2 with lines lw 2 lc rgb "#d62728" title "redis"
set title "6. reserve+commit (unlogged)"
plot "/work/main/bench/results/data/curve-fresh-unlogged-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/curve-fresh-unlogged-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/curve-fresh-unlogged-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw"
set title "2. replay"
plot "/work/main/bench/results/data/curve-replay-logged-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/curve-replay-logged-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/curve-replay-logged-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw", "/work/main/bench/results/data/curve-replay-logged-redis.dat" using 1:2 with lines lw 2 lc rgb "#d62728" title "redis"
unset multiplot
unset logscale y
set xtics auto
set xrange [*:*]
set terminal pngcairo size 900,500 font "sans,10"
set output "/work/main/bench/results/wake.png"
set title "Hot key: waiter wake latency after the owner's commit (CDF)"
set xlabel "ms after the commit returned to the owner"
set ylabel "fraction of waiters"
set key bottom right
set yrange [0:1]
set xrange [*:*]
set grid xtics ytics
set arrow 1 from 2, graph 0 to 2, graph 1 nohead dt 2 lc rgb "gray40"
set label 1 "target p99 2 ms" at 2, graph 0.05 offset 0.5,0 tc rgb "gray40"
plot "/work/main/bench/results/data/wake-ext.dat" using 1:2 with steps lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/wake-plpgsql.dat" using 1:2 with steps lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/wake-raw.dat" using 1:2 with steps lw 2 lc rgb "#2ca02c" title "raw"
unset arrow 1
unset label 1
set xlabel ""
set yrange [*:*]
set terminal pngcairo size 1200,800 font "sans,10"
set output "/work/main/bench/results/scale.png"
set multiplot layout 2,2 title "Cost per operation against stored keys"
set logscale x
set xlabel "stored keys"
set yrange [0:*]
set key below
set format x "10^{%T}"
set title "reserve + commit, fresh keys"
set ylabel "µs of machine time per operation (1 / tps)"
plot "/work/main/bench/results/data/scale-fresh-ext.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/scale-fresh-plpgsql.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/scale-fresh-raw.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#2ca02c" title "raw"
set title "replay"
set ylabel "µs of machine time per operation (1 / tps)"
plot "/work/main/bench/results/data/scale-replay-ext.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/scale-replay-plpgsql.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/scale-replay-raw.dat" using 1:2 with linespoints lw 2 pt 7 lc rgb "#2ca02c" title "raw"
set title "reserve + commit, fresh keys"
set ylabel "server CPU µs per operation"
plot "/work/main/bench/results/data/scale-fresh-ext.dat" using 1:5 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/scale-fresh-plpgsql.dat" using 1:5 with linespoints lw 2 pt 7 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/scale-fresh-raw.dat" using 1:5 with linespoints lw 2 pt 7 lc rgb "#2ca02c" title "raw"
set title "replay"
set ylabel "server CPU µs per operation"
plot "/work/main/bench/results/data/scale-replay-ext.dat" using 1:5 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/scale-replay-plpgsql.dat" using 1:5 with linespoints lw 2 pt 7 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/scale-replay-raw.dat" using 1:5 with linespoints lw 2 pt 7 lc rgb "#2ca02c" title "raw"
unset multiplot
unset logscale x
set format x
set xlabel ""
set yrange [*:*]
set terminal pngcairo size 1200,450 font "sans,10"
set output "/work/main/bench/results/purge.png"
set title "Reserve + commit p99 per 250 ms while the purge runs (first round; bars = purge windows)"
set xlabel "s from the purge start"
set ylabel "ms"
set logscale y
set key top right
set xrange [-3:*]
set yrange [*:*]
set object 1 rect from 0, graph 0.94 to 5.963, graph 0.96 fc rgb "#1f77b4" fs solid 0.6 noborder
set object 2 rect from 0, graph 0.9099999999999999 to 5.436, graph 0.9299999999999999 fc rgb "#ff7f0e" fs solid 0.6 noborder
set object 3 rect from 0, graph 0.88 to 5.873, graph 0.9 fc rgb "#2ca02c" fs solid 0.6 noborder
plot "/work/main/bench/results/data/purge-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/purge-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/purge-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw"
unset logscale y
unset object 1
unset object 2
unset object 3
