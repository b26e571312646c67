package testnet

import (
	"context"
	"fmt"
	"net"
)

// MPTCPWorks checks that a client asking for Multipath TCP gets it from a
// server that offers it, both on 127.0.0.1 in the network namespace that
// run calls its function in. Without that (no CONFIG_MPTCP, or
// net.mptcp.enabled=0) every client silently falls back to TCP, and a
// test of egressd's fallback would pass without testing anything.
func MPTCPWorks(run func(func() error) error) error {
	return run(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		var d net.Dialer
		d.SetMultipathTCP(true)
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
			return fmt.Errorf("a client asking for MPTCP from an MPTCP server got plain TCP (err %v)", err)
		}
		return nil
	})
}
