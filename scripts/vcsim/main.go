// Command vcsim serves govmomi's vCenter simulator (the VPX model) for the vSphere backend's tests.
//
// Debian ships the simulator package (golang-github-vmware-govmomi-dev) but no vcsim binary; this is the
// smallest main that serves it over TLS with a fixed user and password. It prints one line
// "VCSIM_URL=https://user:pass@127.0.0.1:PORT/sdk" once it accepts connections, then serves until killed.
//
// One test knob, outside the SOAP API: PUT /ghrm/fault/METHOD with a vSphere fault type name as the body
// (e.g. InsufficientResourcesFault) makes every later call of METHOD (e.g. CloneVM_Task) fail with that
// SOAP fault, as a vCenter out of capacity does; DELETE /ghrm/fault/METHOD clears it.
package main

import (
	"bytes"
	"crypto/tls"
	"flag"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

const faultPrefix = "/ghrm/fault/"

// faults holds the injected SOAP faults: method name -> fault type.
type faults struct {
	mu     sync.Mutex
	byName map[string]string
}

func (f *faults) control(w http.ResponseWriter, r *http.Request) {
	method := strings.TrimPrefix(r.URL.Path, faultPrefix)
	if method == "" {
		http.Error(w, "method name missing", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodPut, http.MethodPost:
		body, err := io.ReadAll(io.LimitReader(r.Body, 256))
		fault := strings.TrimSpace(string(body))
		if err != nil || fault == "" {
			http.Error(w, "body must name a fault type", http.StatusBadRequest)
			return
		}
		f.byName[method] = fault
	case http.MethodDelete:
		delete(f.byName, method)
	default:
		http.Error(w, "use PUT or DELETE", http.StatusMethodNotAllowed)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// injected returns the fault to answer a SOAP request body with, if any.
func (f *faults) injected(body []byte) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for method, fault := range f.byName {
		if bytes.Contains(body, []byte("<"+method+">")) || bytes.Contains(body, []byte("<"+method+" ")) {
			return fault
		}
	}
	return ""
}

func soapFault(w http.ResponseWriter, fault string) {
	t := html.EscapeString(fault)
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s (injected by the test)</faultstring>
<detail><%sFault xmlns="urn:vim25" xsi:type="%s"></%sFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		t, t, t, t)
}

func (f *faults) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, faultPrefix) {
			f.control(w, r)
			return
		}
		if r.Method == http.MethodPost && r.Body != nil {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if fault := f.injected(body); fault != "" {
				soapFault(w, fault)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		next.ServeHTTP(w, r)
	})
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "port to listen on (0: any free port)")
	username := flag.String("username", "user", "login user")
	password := flag.String("password", "pass", "login password")
	plain := flag.Bool("plain", false, "serve plain HTTP instead of TLS")
	flag.Parse()

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the VPX model: %v", err)
	}
	defer model.Remove()

	model.Service.Listen = &url.URL{
		Host: net.JoinHostPort(*host, strconv.Itoa(*port)),
		User: url.UserPassword(*username, *password),
	}
	if !*plain {
		model.Service.TLS = new(tls.Config)
	}
	model.Service.ServeMux = http.NewServeMux()
	server := model.Service.NewServer()
	// Nobody knows the URL yet, so no request races this swap of the handler.
	injected := &faults{byName: map[string]string{}}
	server.Config.Handler = injected.wrap(server.Config.Handler)

	fmt.Printf("VCSIM_URL=%s\n", server.URL.String())
	os.Stdout.Sync() //nolint:errcheck

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	server.Close()
}
