// tlog-client checks a Sharedcare audit log over HTTP as an independent party would, with the
// Go checksum database's own libraries (golang.org/x/mod/sumdb/tlog and sumdb/note), code
// Sharedcare's authors did not write:
//
//   - it verifies the checkpoint (C2SP tlog-checkpoint, a signed note) with the log's key;
//   - it rebuilds the tree hash from the served tiles (C2SP tlog-tiles, height 8) through
//     tlog.TileHashReader, which itself checks every tile it reads against the checkpoint;
//   - with -index and -data, it proves that entry's inclusion (tlog.ProveRecord/CheckRecord);
//   - with -old, it proves an earlier checkpoint consistent with this one (ProveTree/CheckTree).
//
// It prints one JSON object and exits 0 only when every check passed.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type checkpoint struct {
	Origin string
	N      int64
	Hash   tlog.Hash
}

func main() {
	base := flag.String("url", "", "the log's prefix, e.g. http://127.0.0.1:8080/audit/v1")
	vkey := flag.String("key", "", "the log's note verifier key (name+hash+base64)")
	token := flag.String("token", os.Getenv("TLOG_TOKEN"), "a bearer token (or TLOG_TOKEN)")
	index := flag.Int64("index", -1, "an entry's leaf index to prove")
	dataFile := flag.String("data", "", "a file holding that entry's leaf data")
	old := flag.String("old", "", "a file holding an earlier checkpoint to prove consistent")
	flag.Parse()
	out := map[string]any{}
	if err := run(*base, *vkey, *token, *index, *dataFile, *old, out); err != nil {
		out["error"] = err.Error()
		json.NewEncoder(os.Stdout).Encode(out)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}

func run(base, vkey, token string, index int64, dataFile, oldFile string, out map[string]any) error {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("key: %v", err)
	}
	verifiers := note.VerifierList(verifier)
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequest("GET", strings.TrimSuffix(base, "/")+"/"+path, nil)
		if err != nil {
			return nil, err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(body))
		}
		return body, nil
	}
	raw, err := get("checkpoint")
	if err != nil {
		return err
	}
	cp, err := open(raw, verifiers)
	if err != nil {
		return fmt.Errorf("checkpoint: %v", err)
	}
	out["origin"], out["size"], out["root"] = cp.Origin, cp.N, cp.Hash.String()
	reader := &tiles{get: get}
	hr := tlog.TileHashReader(tlog.Tree{N: cp.N, Hash: cp.Hash}, reader)
	root, err := tlog.TreeHash(cp.N, hr)
	if err != nil {
		return fmt.Errorf("tree hash from tiles: %v", err)
	}
	if root != cp.Hash {
		return fmt.Errorf("the tiles give root %v, the checkpoint says %v", root, cp.Hash)
	}
	out["tiles_match_root"] = true
	out["tiles_read"] = reader.count
	if index >= 0 {
		data, err := os.ReadFile(dataFile)
		if err != nil {
			return err
		}
		proof, err := tlog.ProveRecord(cp.N, index, hr)
		if err != nil {
			return fmt.Errorf("prove record %d: %v", index, err)
		}
		if err := tlog.CheckRecord(proof, cp.N, cp.Hash, index, tlog.RecordHash(data)); err != nil {
			return fmt.Errorf("record %d: %v", index, err)
		}
		out["inclusion"] = true
	}
	if oldFile != "" {
		raw, err := os.ReadFile(oldFile)
		if err != nil {
			return err
		}
		prev, err := open(raw, verifiers)
		if err != nil {
			return fmt.Errorf("old checkpoint: %v", err)
		}
		proof, err := tlog.ProveTree(cp.N, prev.N, hr)
		if err != nil {
			return fmt.Errorf("prove tree %d -> %d: %v", prev.N, cp.N, err)
		}
		if err := tlog.CheckTree(proof, cp.N, cp.Hash, prev.N, prev.Hash); err != nil {
			return fmt.Errorf("consistency %d -> %d: %v", prev.N, cp.N, err)
		}
		out["consistent_from"] = prev.N
	}
	return nil
}

// open verifies a checkpoint note and parses its body (origin, size, base64 root).
func open(raw []byte, verifiers note.Verifiers) (checkpoint, error) {
	n, err := note.Open(raw, verifiers)
	if err != nil {
		return checkpoint{}, err
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		return checkpoint{}, errors.New("fewer than three lines")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return checkpoint{}, fmt.Errorf("size: %v", err)
	}
	h, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(h) != tlog.HashSize {
		return checkpoint{}, errors.New("root: not a base64 SHA-256 hash")
	}
	var cp checkpoint
	cp.Origin, cp.N = lines[0], size
	copy(cp.Hash[:], h)
	return cp, nil
}

// tiles reads C2SP tlog-tiles paths: tile/<L>/<N>[.p/<W>], N in groups of three digits.
type tiles struct {
	get   func(string) ([]byte, error)
	count int
}

func (t *tiles) Height() int { return 8 }

func (t *tiles) ReadTiles(ts []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(ts))
	for i, tile := range ts {
		path := fmt.Sprintf("tile/%d/%s", tile.L, indexPath(tile.N))
		if tile.W < 1<<tile.H {
			path += fmt.Sprintf(".p/%d", tile.W)
		}
		b, err := t.get(path)
		if err != nil {
			return nil, err
		}
		t.count++
		out[i] = b
	}
	return out, nil
}

func (t *tiles) SaveTiles([]tlog.Tile, [][]byte) {}

func indexPath(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n /= 1000; n > 0; n /= 1000 {
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}
