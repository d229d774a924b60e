// etcd, the version kube-apiserver's own go.mod names, built from its Go module for the
// Kubernetes tests (infra/kube.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
