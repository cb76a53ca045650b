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
plot "/work/main/bench/results/data/curve-fresh-logged-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/curve-fresh-logged-ext_async.dat" using 1:2 with lines lw 2 lc rgb "#17becf" title "ext async", "/work/main/bench/results/data/curve-fresh-logged-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/curve-fresh-logged-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw"
set title "6. reserve+commit (unlogged)"
plot "/work/main/bench/results/data/curve-fresh-unlogged-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/curve-fresh-unlogged-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/curve-fresh-unlogged-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw"
set title "2. replay"
plot "/work/main/bench/results/data/curve-replay-logged-ext.dat" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "ext", "/work/main/bench/results/data/curve-replay-logged-plpgsql.dat" using 1:2 with lines lw 2 lc rgb "#ff7f0e" title "plpgsql", "/work/main/bench/results/data/curve-replay-logged-raw.dat" using 1:2 with lines lw 2 lc rgb "#2ca02c" title "raw"
unset multiplot
unset logscale y
set xtics auto
set xrange [*:*]
