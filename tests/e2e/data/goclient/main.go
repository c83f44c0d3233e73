// Command goclient is a tiny HTTP/1.0 client and server for the service directory's
// end-to-end tests: a real Go runtime (nonblocking sockets on epoll, SIGURG preemption)
// under netstackd's seccomp supervision. Standard library only; no network to build.
//
//	goclient get HOST PORT PATH [N]  net.Dial (nonblocking connect, then epoll); N
//	                                 goroutines fetching at once (default 1)
//	goclient rawget IP PORT PATH     blocking socket/connect/read syscalls, no poller
//	goclient serve PORT FILE         HTTP/1.0 server: FILE for every GET; prints "ready",
//	                                 then "peer ADDR" for each connection it accepts
//
// The clients print "SHA256HEX LENGTH" of each response body; get also prints "local
// ADDR" and "remote ADDR" (what getsockname and getpeername said) on stderr. With URG=1
// in the environment, a goroutine sends SIGURG (the runtime's preemption signal) to
// every thread of the process every 100 µs while the command runs, and the clients
// print "urg N" (signals sent) on stderr: far more interruptions of trapped connects
// and accepts than the runtime's own preemption makes, which already sends some.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

const urgInterval = 100 * time.Microsecond

var urgSent atomic.Int64

// stormURG signals every thread of this process with SIGURG until the process exits.
func stormURG() {
	pid := os.Getpid()
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err == nil {
			for _, t := range tasks {
				tid, err := strconv.Atoi(t.Name())
				if err == nil && syscall.Tgkill(pid, tid, syscall.SIGURG) == nil {
					urgSent.Add(1)
				}
			}
		}
		time.Sleep(urgInterval)
	}
}

func request(path string) []byte {
	return []byte("GET " + path + " HTTP/1.0\r\nHost: web\r\n\r\n")
}

// body is what follows the response's headers, after checking the status line.
func body(resp []byte) ([]byte, error) {
	if !bytes.HasPrefix(resp, []byte("HTTP/1.")) || !bytes.Contains(resp[:min(len(resp), 16)], []byte(" 200")) {
		return nil, fmt.Errorf("bad response: %q", resp[:min(len(resp), 64)])
	}
	i := bytes.Index(resp, []byte("\r\n\r\n"))
	if i < 0 {
		return nil, errors.New("no end of headers")
	}
	return resp[i+4:], nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func get(host, port, path string) ([]byte, error) {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 20*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	fmt.Fprintf(os.Stderr, "local %s\nremote %s\n", conn.LocalAddr(), conn.RemoteAddr())
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return nil, err
	}
	if _, err := conn.Write(request(path)); err != nil {
		return nil, err
	}
	resp, err := io.ReadAll(conn)
	if err != nil {
		return nil, err
	}
	return body(resp)
}

func printDigest(data []byte) {
	sum := sha256.Sum256(data)
	fmt.Printf("%s %d\n", hex.EncodeToString(sum[:]), len(data))
}

// getMany fetches n times at once, one goroutine each, and prints each body's digest.
func getMany(host, port, path string, n int) error {
	bodies := make([][]byte, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			var err error
			bodies[i], err = get(host, port, path)
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			return err
		}
	}
	for _, b := range bodies {
		printDigest(b)
	}
	return nil
}

// rawget does what a C program with blocking sockets does: no poller, no deadline
// (the test bounds the process). EINTR is retried as a C program would.
func rawget(ip, port, path string) ([]byte, error) {
	addr := net.ParseIP(ip).To4()
	p, err := strconv.Atoi(port)
	if addr == nil || err != nil {
		return nil, fmt.Errorf("bad address %s:%s", ip, port)
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet4{Port: p}
	copy(sa.Addr[:], addr)
	for {
		err = syscall.Connect(fd, sa)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	req := request(path)
	for len(req) > 0 {
		n, err := syscall.Write(fd, req)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		req = req[n:]
	}
	var resp []byte
	buf := make([]byte, 1<<16)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return body(resp)
		}
		resp = append(resp, buf[:n]...)
	}
}

func serve(port, file string) error {
	payload, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	header := fmt.Sprintf("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n", len(payload))
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		fmt.Printf("peer %s\n", conn.RemoteAddr())
		go func(c net.Conn) {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			r := bufio.NewReader(c)
			for { // the request's headers, up to the empty line
				line, err := r.ReadString('\n')
				if err != nil || line == "\r\n" || line == "\n" {
					break
				}
			}
			_, _ = c.Write(append([]byte(header), payload...))
		}(conn)
	}
}

func main() {
	if os.Getenv("URG") == "1" {
		go stormURG()
	}
	args := os.Args[1:]
	var data []byte
	var err error
	switch {
	case (len(args) == 4 || len(args) == 5) && args[0] == "get":
		n := 1
		if len(args) == 5 {
			n, err = strconv.Atoi(args[4])
		}
		if err == nil {
			err = getMany(args[1], args[2], args[3], n)
		}
	case len(args) == 4 && args[0] == "rawget":
		data, err = rawget(args[1], args[2], args[3])
	case len(args) == 3 && args[0] == "serve":
		err = serve(args[1], args[2])
	default:
		fmt.Fprintln(os.Stderr, "usage: goclient get HOST PORT PATH | rawget IP PORT PATH | serve PORT FILE")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "goclient:", err)
		os.Exit(1)
	}
	if data != nil {
		printDigest(data)
	}
	fmt.Fprintf(os.Stderr, "urg %d\n", urgSent.Load())
}
