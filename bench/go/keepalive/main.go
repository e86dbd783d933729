// keepalive_scale for etcd's Go client (clientv3 from Debian's
// golang-etcd-server-dev, built in GOPATH mode by bench/go/build.sh): the
// same phases as bench/keepalive_scale.lua, printing the same line.
//
//	keepalive -endpoints 127.0.0.1:2379 -n 20000 -ttl 60 -gets 2000
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
)

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

func p50(cli *clientv3.Client, gets int) time.Duration {
	t := make([]time.Duration, gets)
	for i := range t {
		t0 := time.Now()
		if _, err := cli.Get(context.Background(), "bench/k", clientv3.WithSerializable()); err != nil {
			panic(err)
		}
		t[i] = time.Since(t0)
	}
	sort.Slice(t, func(a, b int) bool { return t[a] < t[b] })
	return t[gets/2]
}

func main() {
	eps := flag.String("endpoints", "127.0.0.1:2379", "comma-separated")
	n := flag.Int("n", 20000, "leases")
	ttl := flag.Int64("ttl", 60, "lease TTL, seconds")
	gets := flag.Int("gets", 2000, "gets per p50")
	flag.Parse()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*eps, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	defer cli.Close()
	ctx := context.Background()
	if _, err := cli.Put(ctx, "bench/k", "v"); err != nil {
		panic(err)
	}
	none := p50(cli, *gets)
	rss0 := rssKiB()

	// grants, from 100 goroutines at once (as the Lua side: 100 coroutines)
	t0, c0 := time.Now(), cpu()
	ids := make([]clientv3.LeaseID, *n)
	var wg sync.WaitGroup
	for g := 0; g < 100; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < *n; i += 100 {
				r, err := cli.Grant(ctx, *ttl)
				if err != nil {
					panic(err)
				}
				ids[i] = r.ID
			}
		}(g)
	}
	wg.Wait()
	grants, grantCPU := time.Since(t0), cpu()-c0

	// every keep-alive started at once
	t0, c0 = time.Now(), cpu()
	chans := make([]<-chan *clientv3.LeaseKeepAliveResponse, *n)
	cancels := make([]context.CancelFunc, *n)
	for i := range ids {
		kctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		ch, err := cli.KeepAlive(kctx, ids[i])
		if err != nil {
			panic(err)
		}
		chans[i] = ch
	}
	start := time.Since(t0)
	t0 = time.Now()
	lost := 0
	for _, ch := range chans {
		select {
		case r, ok := <-ch:
			if !ok || r == nil {
				lost++
			}
		case <-time.After(120 * time.Second):
			lost++
		}
	}
	first := time.Since(t0)
	kaCPU := cpu() - c0
	// drain the channels from now on (Go's client drops answers a full
	// channel cannot take, but an undrained channel is not how it is used)
	for _, ch := range chans {
		go func(ch <-chan *clientv3.LeaseKeepAliveResponse) {
			for range ch {
			}
		}(ch)
	}
	with := p50(cli, *gets)
	rss1 := rssKiB()

	t0 = time.Now()
	for _, c := range cancels {
		c()
	}
	closing := time.Since(t0)

	// revoke them all (not timed) so that every round starts alike
	for g := 0; g < 100; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < *n; i += 100 {
				cli.Revoke(ctx, ids[i])
			}
		}(g)
	}
	wg.Wait()
	fmt.Printf("RESULT client=go n=%d grants_s=%.3f start_s=%.3f first_s=%.3f lost=%d get_none_us=%.1f get_with_us=%.1f close_ms=%.1f rss_per_lease_b=%.0f grant_cpu_us=%.1f ka_cpu_us=%.1f\n",
		*n, grants.Seconds(), start.Seconds(), first.Seconds(), lost,
		float64(none.Nanoseconds())/1e3, float64(with.Nanoseconds())/1e3,
		float64(closing.Nanoseconds())/1e6, float64(rss1-rss0)*1024/float64(*n),
		grantCPU/float64(*n)*1e6, kaCPU/float64(*n)*1e6)
}
