// k3s-proxy: a stand-in for the K3s agent's client-side load balancer, for
// `cargo xtask bench failover` (lb-failover-bench) and `cargo xtask bench
// connect` (lb-connect-bench). daas-lb's own code, not
// K3s's: it mimics the behaviour that matters when a server dies.
//
// Invariants:
//   - Every accepted client gets one dial attempt per server at most, in
//     preference order: servers that are up (in list order), then recovering
//     ones, then failed ones (fail open, as K3s does when nothing else is left).
//   - A dial that fails (refused, or no answer within -dial-timeout) marks its
//     server failed at once, and the same client's dial moves on to the next
//     server; only when every server failed is the client's connection closed.
//   - A health loop probes every server each -check-interval with a TCP
//     connect (timeout: the interval): a pass takes a failed server to
//     recovering, a second pass to up; a failed probe of an up server fails it.
//   - Bytes are copied both ways; each direction's end is passed on as a
//     half-close, and both sockets close when both directions ended.
//
// Usage: k3s-proxy -listen 127.0.0.1:PORT -servers A:P,B:P [-dial-timeout 10s]
// [-check-interval 1s]. It prints "listening ADDR" on stdout once it accepts.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Server states, best last.
const (
	stateFailed = iota
	stateRecovering
	stateUp
)

type server struct {
	address string
	order   int
	state   int
}

type balancer struct {
	mu          sync.Mutex
	servers     []*server
	dialTimeout time.Duration
}

// candidates returns the servers in the order a new dial tries them.
func (b *balancer) candidates() []*server {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := append([]*server(nil), b.servers...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].state != out[j].state {
			return out[i].state > out[j].state
		}
		return out[i].order < out[j].order
	})
	return out
}

func (b *balancer) setState(s *server, state int, why string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.state != state {
		log.Printf("server %s: %d -> %d (%s)", s.address, s.state, state, why)
		s.state = state
	}
}

// dial tries every candidate in turn; a failure fails that server.
func (b *balancer) dial() (net.Conn, error) {
	var last error
	for _, s := range b.candidates() {
		conn, err := net.DialTimeout("tcp", s.address, b.dialTimeout)
		if err == nil {
			return conn, nil
		}
		last = err
		b.setState(s, stateFailed, "dial: "+err.Error())
	}
	return nil, fmt.Errorf("all servers failed, last: %w", last)
}

// checkLoop probes every server each interval.
func (b *balancer) checkLoop(interval time.Duration) {
	for range time.Tick(interval) {
		for _, s := range b.candidates() {
			go func(s *server) {
				conn, err := net.DialTimeout("tcp", s.address, interval)
				b.mu.Lock()
				state := s.state
				b.mu.Unlock()
				if err != nil {
					if state == stateUp {
						b.setState(s, stateFailed, "check: "+err.Error())
					}
					return
				}
				conn.Close()
				if state < stateUp {
					b.setState(s, state+1, "check passed")
				}
			}(s)
		}
	}
}

// pipe copies src to dst, then half-closes dst's write side.
func pipe(dst, src net.Conn, done *sync.WaitGroup) {
	defer done.Done()
	_, _ = io.Copy(dst, src)
	if tcp, ok := dst.(*net.TCPConn); ok {
		_ = tcp.CloseWrite()
	}
}

func (b *balancer) serve(client net.Conn) {
	defer client.Close()
	upstream, err := b.dial()
	if err != nil {
		log.Printf("client %s: %v", client.RemoteAddr(), err)
		return
	}
	defer upstream.Close()
	var done sync.WaitGroup
	done.Add(2)
	go pipe(upstream, client, &done)
	go pipe(client, upstream, &done)
	done.Wait()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to accept clients on")
	servers := flag.String("servers", "", "comma-separated server addresses, preferred first")
	dialTimeout := flag.Duration("dial-timeout", 10*time.Second, "timeout of one dial to one server")
	checkInterval := flag.Duration("check-interval", time.Second, "time between health probes of a server")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix("k3s-proxy: ")
	if *servers == "" {
		log.Fatal("-servers is required")
	}
	b := &balancer{dialTimeout: *dialTimeout}
	for i, address := range strings.Split(*servers, ",") {
		b.servers = append(b.servers, &server{address: address, order: i, state: stateUp})
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen on %s: %v", *listen, err)
	}
	go b.checkLoop(*checkInterval)
	fmt.Fprintf(os.Stdout, "listening %s\n", listener.Addr())
	for {
		client, err := listener.Accept()
		if err != nil {
			log.Fatalf("accept on %s: %v", listener.Addr(), err)
		}
		go b.serve(client)
	}
}
