// stmbank runs the plain bank workload through Go's clientv3/concurrency STM
// (etcd 3.4), for bench/stm.ts: W goroutines, each on its own client (or all
// on one with -shared), move a random amount between two random accounts:
// Get(a), Get(b), Put, Put.
//
// Protocol on stdin/stdout: after connecting it prints "ready"; each line
// "run <deadline-epoch-ms>" runs until that time and prints one JSON report;
// "quit" exits.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

type report struct {
	Ops       int       `json:"ops"`
	Bodies    int       `json:"bodies"`
	Latencies []float64 `json:"latencies"`
	CPUMs     float64   `json:"cpuMs"`
}

func cpuMs() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e6
}

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:2379", "comma-separated endpoints")
	workers := flag.Int("workers", 8, "concurrent transfers, each on its own client")
	prefix := flag.String("prefix", "bench/stm/go/", "account key prefix")
	accounts := flag.Int("accounts", 100, "number of accounts")
	shared := flag.Bool("shared", false, "all workers share one client")
	flag.Parse()

	clients := make([]*clientv3.Client, *workers)
	for i := range clients {
		if *shared && i > 0 {
			clients[i] = clients[0]
			continue
		}
		c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(*endpoints, ","), DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := c.Get(context.Background(), "bench/connect"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		clients[i] = c
	}
	account := func(i int) string { return fmt.Sprintf("%s%03d", *prefix, i) }
	fmt.Println("ready")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 || fields[0] == "quit" {
			return
		}
		endMs, _ := strconv.ParseFloat(fields[1], 64)
		deadline := time.UnixMicro(int64(endMs * 1000))
		var mu sync.Mutex
		var rep report
		cpu0 := cpuMs()
		var wg sync.WaitGroup
		for w := 0; w < *workers; w++ {
			wg.Add(1)
			go func(c *clientv3.Client, rnd *rand.Rand) {
				defer wg.Done()
				for time.Now().Before(deadline) {
					i := rnd.Intn(*accounts)
					j := rnd.Intn(*accounts - 1)
					if j >= i {
						j++
					}
					amount := 1 + rnd.Intn(50)
					bodies := 0
					t := time.Now()
					_, err := concurrency.NewSTM(c, func(s concurrency.STM) error {
						bodies++
						a, _ := strconv.Atoi(s.Get(account(i)))
						b, _ := strconv.Atoi(s.Get(account(j)))
						if a < amount {
							return nil
						}
						s.Put(account(i), strconv.Itoa(a-amount))
						s.Put(account(j), strconv.Itoa(b+amount))
						return nil
					})
					lat := float64(time.Since(t).Microseconds()) / 1000
					if err != nil {
						fmt.Fprintln(os.Stderr, err)
						os.Exit(1)
					}
					mu.Lock()
					rep.Ops++
					rep.Bodies += bodies
					rep.Latencies = append(rep.Latencies, lat)
					mu.Unlock()
				}
			}(clients[w], rand.New(rand.NewSource(time.Now().UnixNano()+int64(w))))
		}
		wg.Wait()
		rep.CPUMs = cpuMs() - cpu0
		out, _ := json.Marshal(rep)
		fmt.Println(string(out))
	}
}
