// promql-check: parses PromQL expressions with Prometheus' own parser
// (github.com/prometheus/prometheus/promql/parser), as Prometheus does when it loads a rule
// file. Reads a JSON object {"name": "expression", …} on stdin; prints "ok <name>" for each
// expression that parses and "FAILED <name>: <error>" for each that does not, and exits 1 if
// any failed. Used by tests/python/chart_checks.py on the chart's alerts and dashboard.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	var exprs map[string]string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintf(os.Stderr, "promql-check: stdin is not a JSON object of expressions: %v\n", err)
		os.Exit(2)
	}
	names := make([]string, 0, len(exprs))
	for name := range exprs {
		names = append(names, name)
	}
	sort.Strings(names)
	p := parser.NewParser(parser.Options{})
	failed := 0
	for _, name := range names {
		if _, err := p.ParseExpr(exprs[name]); err != nil {
			fmt.Printf("FAILED %s: %v\n", name, err)
			failed++
			continue
		}
		fmt.Printf("ok %s\n", name)
	}
	if failed > 0 {
		os.Exit(1)
	}
}
