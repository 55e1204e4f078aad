// Command controlplane is kube-apiserver, kube-controller-manager, kube-scheduler and kubectl in
// one binary, built from the published k8s.io/kubernetes module for corral's test cluster:
//
//	controlplane apiserver|controller-manager|scheduler|kubectl [flags...]
//
// Called through a link named after one of them (kubectl -> controlplane), it runs that one.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as the upstream mains import it

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var servers = map[string]func() *cobra.Command{
	"apiserver":          apiserver.NewAPIServerCommand,
	"controller-manager": controllermanager.NewControllerManagerCommand,
	"scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func main() {
	name := filepath.Base(os.Args[0])
	if servers[name] == nil && name != "kubectl" {
		if len(os.Args) < 2 {
			usage()
		}
		name = os.Args[1]
		os.Args = os.Args[1:] // each command reads its flags from os.Args[1:]
	}
	if name == "kubectl" {
		// As k8s.io/kubernetes/cmd/kubectl does.
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	if servers[name] == nil {
		usage()
	}
	os.Exit(cli.Run(servers[name]()))
}

func usage() {
	fmt.Fprintln(os.Stderr,
		"usage: controlplane apiserver|controller-manager|scheduler|kubectl [flags...]")
	os.Exit(2)
}
