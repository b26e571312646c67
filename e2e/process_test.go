package e2e

import (
	"bufio"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// process is a background program started for a test (a server, egressd),
// stopped at cleanup. Its output is kept for failure messages, and each line
// can also be handed to a callback.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited

	mu  sync.Mutex
	out strings.Builder
}

// startProcess starts cmd in the background. onStdout, if not nil, is called
// with every stdout line and onStderr with every stderr line, each from its
// own goroutine.
func startProcess(t testing.TB, name string, cmd *exec.Cmd, onStdout, onStderr func(string)) *process {
	t.Helper()
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go p.readLines(&readers, stdout, onStdout)
	go p.readLines(&readers, stderr, onStderr)
	go func() {
		readers.Wait()
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.stop)
	return p
}

func (p *process) readLines(wg *sync.WaitGroup, r io.Reader, each func(string)) {
	defer wg.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.out.WriteString(line)
		p.out.WriteByte('\n')
		p.mu.Unlock()
		if each != nil {
			each(line)
		}
	}
	io.Copy(io.Discard, r)
}

// output is everything the process printed so far, stdout and stderr mixed.
func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to end (SIGTERM), then kills it if it lingers.
func (p *process) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(3 * time.Second):
	}
	p.cmd.Process.Kill()
	<-p.done
}
