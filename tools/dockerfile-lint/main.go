// dockerfile-lint checks a Dockerfile with BuildKit's own Dockerfile frontend: the parse and
// the build checks `docker build --check` runs, without a Docker daemon. It prints each finding
// (rule, line, detail) and exits 1 when there is any.
//
//	go run . ../../Dockerfile
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	digest "github.com/opencontainers/go-digest"
)

// offline answers every base image with an empty Linux image config: the checks need no
// registry (none is reachable here), only the Dockerfile.
type offline struct{}

func (offline) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}`)
	return ref, digest.FromBytes(config), config, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfile-lint DOCKERFILE")
		os.Exit(2)
	}
	dt, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	// The source the findings point into (as BuildKit's own frontend sets it up).
	src := llb.Scratch()
	def, err := src.Marshal(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	sm := llb.NewSourceMap(&src, os.Args[1], "Dockerfile", dt)
	sm.Definition = def
	res, err := dockerfile2llb.DockerfileLint(ctx, dt, dockerfile2llb.ConvertOpt{SourceMap: sm, MetaResolver: offline{}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if res.Error != nil {
		fmt.Printf("%s: error: %s\n", os.Args[1], res.Error.Message)
		os.Exit(1)
	}
	for _, w := range res.Warnings {
		line := 0
		if len(w.Location.Ranges) > 0 {
			line = int(w.Location.Ranges[0].Start.Line)
		}
		fmt.Printf("%s:%d: %s: %s\n", os.Args[1], line, w.RuleName, w.Detail)
	}
	if len(res.Warnings) > 0 {
		os.Exit(1)
	}
	fmt.Printf("%s: no findings (BuildKit Dockerfile checks)\n", os.Args[1])
}
