// vcsim for dr's tests: govmomi's vCenter (or ESXi) simulator on a loopback port.
// Prints the SDK URL (without credentials) on stdout, then serves until killed.
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build -o tests/vcsim/vcsim tests/vcsim/main.go
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// restricted answers privilege checks like a vCenter where the session's role lacks `deny`.
type restricted struct {
	*simulator.AuthorizationManager
	deny map[string]bool
}

func (m *restricted) HasPrivilegeOnEntity(req *types.HasPrivilegeOnEntity) soap.HasFault {
	granted := make([]bool, len(req.PrivId))
	for i, id := range req.PrivId {
		granted[i] = !m.deny[id]
	}
	return &methods.HasPrivilegeOnEntityBody{Res: &types.HasPrivilegeOnEntityResponse{Returnval: granted}}
}

func (m *restricted) HasPrivilegeOnEntities(req *types.HasPrivilegeOnEntities) soap.HasFault {
	var result []types.EntityPrivilege
	for _, entity := range req.Entity {
		privilege := types.EntityPrivilege{Entity: entity}
		for _, id := range req.PrivId {
			privilege.PrivAvailability = append(privilege.PrivAvailability,
				types.PrivilegeAvailability{PrivId: id, IsGranted: !m.deny[id]})
		}
		result = append(result, privilege)
	}
	return &methods.HasPrivilegeOnEntitiesBody{Res: &types.HasPrivilegeOnEntitiesResponse{Returnval: result}}
}

func main() {
	esx := flag.Bool("esx", false, "simulate a standalone ESXi host instead of a vCenter")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (loopback only)")
	useTLS := flag.Bool("tls", false, "serve https with a self-signed certificate")
	user := flag.String("username", "", "the only user accepted (default: any non-empty user)")
	password := flag.String("password", "", "the password of -username")
	deny := flag.String("deny", "", "comma-separated privileges every session lacks, e.g. System.Read")
	delay := flag.String("delay", "", "METHOD=MILLISECONDS: slow one SOAP method down (timeouts)")
	model := simulator.VPX()
	flag.IntVar(&model.Datacenter, "dc", 1, "datacenters")
	flag.IntVar(&model.Cluster, "cluster", 1, "clusters per datacenter")
	flag.IntVar(&model.ClusterHost, "host", 3, "hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", 1, "standalone hosts per datacenter")
	flag.IntVar(&model.Machine, "vm", 2, "VMs per resource pool (each cluster and standalone host has one)")
	flag.IntVar(&model.Datastore, "ds", 1, "datastores per datacenter")
	flag.Parse()
	if *esx {
		machines, datastores := model.Machine, model.Datastore
		model = simulator.ESX()
		model.Machine, model.Datastore = machines, datastores
	}
	if method, ms, ok := strings.Cut(*delay, "="); ok {
		var n int
		fmt.Sscan(ms, &n)
		model.DelayConfig.MethodDelay = map[string]int{method: n}
	}
	// vcsim ships samples of virtualDisk.write.average (counter 174, KiB/s) for VMs but none of
	// virtualDisk.numberWriteAveraged.average (172, writes/s): derive them at 8 KiB per write.
	writes := make([]int64, len(vpx.VmMetricData[174]))
	for i, kib := range vpx.VmMetricData[174] {
		writes[i] = kib / 8
	}
	vpx.VmMetricData[172] = writes
	vpx.VmMetrics = append(vpx.VmMetrics, types.PerfMetricId{CounterId: 172, Instance: ""})
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
	defer model.Remove()
	if *deny != "" {
		denied := map[string]bool{}
		for _, id := range strings.Split(*deny, ",") {
			denied[id] = true
		}
		authz := simulator.Map.Get(*model.ServiceContent.AuthorizationManager).(*simulator.AuthorizationManager)
		simulator.Map.Put(&restricted{authz, denied})
	}
	model.Service.Listen = &url.URL{Host: *listen}
	if *user != "" {
		model.Service.Listen.User = url.UserPassword(*user, *password)
	}
	if *useTLS {
		model.Service.TLS = new(tls.Config)
	}
	server := model.Service.NewServer()
	defer server.Close()
	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
