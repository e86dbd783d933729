// The workloads of bench/bench.lua for etcd's Go client (clientv3 of etcd
// 3.4, from Debian's golang-etcd-server-dev, built in GOPATH mode by
// bench/go/build.sh), printing the same RESULT line.
//
//	kv -endpoints 127.0.0.1:2379 -workload put_seq -n 5000
//
// Workloads: put_seq, get_seq, get_100, get_100_ns, txn_cas_seq, lease_seq,
// put_conc (64 in flight), watch (a prefix watch receiving n events while 64
// writers put them), mem_watch_ka (n watches + n kept-alive leases: resident
// memory), rss_puts (n puts, 64 in flight: resident memory growth).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/namespace"
)

const inFlight = 64

func rssKiB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmRSS:") {
			v, _ := strconv.ParseInt(strings.Fields(sc.Text())[1], 10, 64)
			return v
		}
	}
	return 0
}

// CPU time of the whole process (every thread), seconds.
func cpu() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

type result struct {
	lat    []time.Duration
	ops    int
	errors int
	wall   time.Duration
	cpu    float64
	extra  string
}

func (r *result) print(workload string) {
	sort.Slice(r.lat, func(a, b int) bool { return r.lat[a] < r.lat[b] })
	var p50, p99, mean float64
	if n := len(r.lat); n > 0 {
		p50 = float64(r.lat[n/2].Nanoseconds()) / 1e3
		p99 = float64(r.lat[(n*99)/100].Nanoseconds()) / 1e3
		var sum time.Duration
		for _, d := range r.lat {
			sum += d
		}
		mean = float64(sum.Nanoseconds()) / float64(n) / 1e3
	}
	ops := float64(r.ops) / r.wall.Seconds()
	fmt.Printf("RESULT workload=%s ops=%d ops_s=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f errors=%d cpu_us_op=%.2f%s\n",
		workload, r.ops, ops, p50, p99, mean, r.errors, r.cpu/float64(r.ops)*1e6, r.extra)
}

// run f n times in sequence, timing each
func seq(n int, f func(i int) error) *result {
	r := &result{lat: make([]time.Duration, 0, n)}
	c0, t0 := cpu(), time.Now()
	for i := 0; i < n; i++ {
		s := time.Now()
		if err := f(i); err != nil {
			r.errors++
		}
		r.lat = append(r.lat, time.Since(s))
	}
	r.wall, r.cpu, r.ops = time.Since(t0), cpu()-c0, n
	return r
}

// run f n times with `inFlight` goroutines taking the next index
func conc(n int, f func(i int) error) *result {
	r := &result{lat: make([]time.Duration, n)}
	var mu sync.Mutex
	next := 0
	var wg sync.WaitGroup
	c0, t0 := cpu(), time.Now()
	for g := 0; g < inFlight; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				s := time.Now()
				err := f(i)
				r.lat[i] = time.Since(s)
				if err != nil {
					mu.Lock()
					r.errors++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	r.wall, r.cpu, r.ops = time.Since(t0), cpu()-c0, n
	return r
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated")
	workload := flag.String("workload", "put_seq", "workload")
	n := flag.Int("n", 2000, "operations")
	size := flag.Int("size", 64, "value bytes")
	flag.Parse()

	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	bg := context.Background()
	value := strings.Repeat("v", *size)
	var kv clientv3.KV = cli
	// warm up the connection
	if _, err := cli.Get(bg, "bench/warm-up"); err != nil {
		panic(err)
	}

	var r *result
	switch *workload {
	case "put_seq":
		r = seq(*n, func(i int) error {
			_, err := kv.Put(bg, fmt.Sprintf("bench/put/%d", i%1000), value)
			return err
		})
	case "get_seq":
		if _, err := kv.Put(bg, "bench/get", value); err != nil {
			panic(err)
		}
		r = seq(*n, func(int) error {
			_, err := kv.Get(bg, "bench/get")
			return err
		})
	case "get_100", "get_100_ns":
		pfx := "bench/g100/"
		if *workload == "get_100_ns" {
			kv = namespace.NewKV(cli.KV, "bench/ns/")
		}
		for i := 0; i < 100; i++ {
			if _, err := kv.Put(bg, fmt.Sprintf("%s%03d", pfx, i), value); err != nil {
				panic(err)
			}
		}
		r = seq(*n, func(int) error {
			res, err := kv.Get(bg, pfx, clientv3.WithPrefix())
			if err == nil && len(res.Kvs) != 100 {
				return fmt.Errorf("got %d keys", len(res.Kvs))
			}
			return err
		})
	case "txn_cas_seq":
		cur := "0"
		if _, err := kv.Put(bg, "bench/cas", cur); err != nil {
			panic(err)
		}
		r = seq(*n, func(i int) error {
			next := strconv.Itoa(i + 1)
			res, err := kv.Txn(bg).If(clientv3.Compare(clientv3.Value("bench/cas"), "=", cur)).
				Then(clientv3.OpPut("bench/cas", next)).Commit()
			if err != nil {
				return err
			}
			if !res.Succeeded {
				return fmt.Errorf("cas failed")
			}
			cur = next
			return nil
		})
	case "lease_seq":
		r = seq(*n, func(int) error {
			l, err := cli.Grant(bg, 60)
			if err != nil {
				return err
			}
			_, err = cli.Revoke(bg, l.ID)
			return err
		})
	case "put_conc":
		r = conc(*n, func(i int) error {
			_, err := kv.Put(bg, fmt.Sprintf("bench/conc/%d", i%1000), value)
			return err
		})
	case "watch":
		wctx, cancel := context.WithCancel(bg)
		wch := cli.Watch(wctx, "bench/watch/", clientv3.WithPrefix())
		sent := make([]time.Time, *n)
		lat := make([]time.Duration, 0, *n)
		done := make(chan struct{})
		var mu sync.Mutex
		go func() {
			got := 0
			for wr := range wch {
				now := time.Now()
				for _, ev := range wr.Events {
					i, _ := strconv.Atoi(strings.TrimPrefix(string(ev.Kv.Key), "bench/watch/"))
					mu.Lock()
					lat = append(lat, now.Sub(sent[i]))
					mu.Unlock()
					got++
				}
				if got >= *n {
					close(done)
					return
				}
			}
		}()
		r = conc(*n, func(i int) error {
			mu.Lock()
			sent[i] = time.Now()
			mu.Unlock()
			_, err := kv.Put(bg, fmt.Sprintf("bench/watch/%d", i), value)
			return err
		})
		t0 := time.Now()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			r.errors++
		}
		// events/s over the whole run: the writers' time plus the tail
		r.wall += time.Since(t0)
		r.lat = lat
		cancel()
	case "mem_watch_ka":
		rss0 := rssKiB()
		ctx, cancel := context.WithCancel(bg)
		c0, t0 := cpu(), time.Now()
		for i := 0; i < *n; i++ {
			cli.Watch(ctx, fmt.Sprintf("bench/mem/w%d", i))
			l, err := cli.Grant(bg, 60)
			if err != nil {
				panic(err)
			}
			ch, err := cli.KeepAlive(ctx, l.ID)
			if err != nil {
				panic(err)
			}
			go func() {
				for range ch {
				}
			}()
		}
		time.Sleep(2 * time.Second)
		rss1 := rssKiB()
		r = &result{ops: *n, wall: time.Since(t0), cpu: cpu() - c0,
			extra: fmt.Sprintf(" rss_mb=%.1f", float64(rss1-rss0)/1024)}
		cancel()
	case "rss_puts":
		rss0 := rssKiB()
		var mid int64
		r = conc(*n, func(i int) error {
			if i == *n/10 {
				mid = rssKiB()
			}
			_, err := kv.Put(bg, fmt.Sprintf("bench/rss/%d", i%1000), value)
			return err
		})
		rss1 := rssKiB()
		r.extra = fmt.Sprintf(" rss_mb=%.1f rss_growth_mb=%.1f", float64(rss1-rss0)/1024, float64(rss1-mid)/1024)
		r.lat = nil
	default:
		fmt.Fprintf(os.Stderr, "unknown workload %q\n", *workload)
		os.Exit(2)
	}
	r.print(*workload)
}
