//! The Merkle tree stored as tiles ([C2SP tlog-tiles]): tiles of height 8, each holding up to
//! 256 hashes. Level 0 holds leaf hashes; level L holds the roots of the complete subtrees of
//! 256^L leaves, i.e. the roots of the full tiles of level L − 1. The tiles at the right edge
//! are partial (fewer than 256 hashes) and are rewritten as the log grows; a full tile never
//! changes again. Any RFC 6962 subtree root, and so any proof, needs at most one tile per
//! level and range: O(log n) reads instead of every leaf. Pure functions, no I/O.
//!
//! [C2SP tlog-tiles]: https://c2sp.org/tlog-tiles

use std::collections::{BTreeSet, HashMap};

use crate::merkle::{self, Hash};

/// Hashes per full tile.
pub const WIDTH: u64 = 256;
/// Tree levels per tile level.
pub const HEIGHT: u32 = 8;

/// A tile: its level and its index within the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    /// Tile level (0 = leaf hashes).
    pub level: u32,
    /// Index from the left.
    pub index: u64,
}

/// Hashes stored at tile level `level` for a tree of `size` leaves.
pub fn hashes_at(level: u32, size: u64) -> u64 {
    size.checked_shr(HEIGHT * level).unwrap_or(0)
}

/// The width tile `id` has in a tree of `size` leaves (0 if the tree does not reach it).
pub fn width_in(id: TileId, size: u64) -> u64 {
    let count = hashes_at(id.level, size);
    count.saturating_sub(id.index * WIDTH).min(WIDTH)
}

/// The partial tiles at the right edge of a tree of `size` leaves (at most one per level).
pub fn right_edge(size: u64) -> Vec<TileId> {
    (0..)
        .map(|level| (level, hashes_at(level, size)))
        .take_while(|(_, count)| *count > 0)
        .filter(|(_, count)| count % WIDTH != 0)
        .map(|(level, count)| TileId {
            level,
            index: count / WIDTH,
        })
        .collect()
}

/// The complete subtrees (height, index) whose roots, folded from the right, are the RFC 6962
/// root of leaves `lo..hi`. For the ranges a proof asks for (`lo` a multiple of a power of two
/// at least `hi − lo`) they are the binary digits of `hi − lo`, largest first.
pub fn subtrees(lo: u64, hi: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut at = lo;
    while at < hi {
        let mut height = if at == 0 { 63 } else { at.trailing_zeros() };
        while (1u64 << height) > hi - at {
            height -= 1;
        }
        out.push((height, at >> height));
        at += 1u64 << height;
    }
    out
}

/// Where a complete subtree's root is computed from: a run of `count` hashes starting at
/// `offset` in one tile (count is a power of two below 256, so the run never spans tiles).
fn source(height: u32, index: u64) -> (TileId, usize, usize) {
    let level = height / HEIGHT;
    let within = height % HEIGHT;
    let first = index << within;
    (
        TileId {
            level,
            index: first / WIDTH,
        },
        (first % WIDTH) as usize,
        1usize << within,
    )
}

/// The tiles the roots of `ranges` need.
pub fn tiles_for(ranges: &[(u64, u64)]) -> BTreeSet<TileId> {
    ranges
        .iter()
        .flat_map(|&(lo, hi)| subtrees(lo, hi))
        .map(|(h, i)| source(h, i).0)
        .collect()
}

/// Tiles read from storage: each tile's hashes, 32 bytes apiece; and full tiles already
/// expanded (from a cache: a full tile never changes).
#[derive(Clone, Debug, Default)]
pub struct Tiles(
    pub HashMap<TileId, Vec<u8>>,
    pub HashMap<TileId, std::sync::Arc<Expanded>>,
);

/// A tile with the root of every complete subtree inside it: `levels[k]` holds the roots of
/// its aligned runs of 2^k hashes (level 0 the hashes themselves; for a full tile, level 8 its
/// root). Each hash inside is computed once, however many proofs use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expanded(Vec<Vec<Hash>>);

impl Expanded {
    /// Expands a tile's bytes (full or partial).
    pub fn new(bytes: &[u8]) -> Expanded {
        let mut levels = vec![bytes.chunks_exact(32).map(to_hash).collect::<Vec<Hash>>()];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let up = below
                .chunks_exact(2)
                .filter_map(|p| match p {
                    [l, r] => Some(merkle::node_hash(l, r)),
                    _ => None,
                })
                .collect();
            levels.push(up);
        }
        Expanded(levels)
    }

    /// Whether the tile is full (and so never changes).
    pub fn is_full(&self) -> bool {
        self.0.first().is_some_and(|leaves| leaves.len() == WIDTH as usize)
    }

    /// The root of a full tile (the hash the level above holds for it).
    pub fn root(&self) -> Option<Hash> {
        self.0.get(HEIGHT as usize).and_then(|l| l.first().copied())
    }
}

impl Tiles {
    /// The root of the complete subtree of height `height` at `index`.
    pub fn subtree(&self, height: u32, index: u64) -> Result<Hash, TileError> {
        let (id, offset, count) = source(height, index);
        if let Some(e) = self.1.get(&id) {
            let within = count.trailing_zeros() as usize;
            return e
                .0
                .get(within)
                .and_then(|l| l.get(offset >> within))
                .copied()
                .ok_or_else(|| {
                    TileError::new(format!(
                        "tile {}/{} holds fewer than the {} hashes needed",
                        id.level,
                        id.index,
                        offset + count
                    ))
                });
        }
        let bytes = self
            .0
            .get(&id)
            .ok_or_else(|| TileError::new(format!("tile {}/{} is missing", id.level, id.index)))?;
        let run = bytes.get(offset * 32..(offset + count) * 32).ok_or_else(|| {
            TileError::new(format!(
                "tile {}/{} holds {} hashes, fewer than the {} needed",
                id.level,
                id.index,
                bytes.len() / 32,
                offset + count
            ))
        })?;
        let hashes: Vec<Hash> = run.chunks_exact(32).map(to_hash).collect();
        Ok(merkle::root(&hashes))
    }

    /// The RFC 6962 root of leaves `lo..hi`.
    pub fn range_root(&self, lo: u64, hi: u64) -> Result<Hash, TileError> {
        let mut parts = subtrees(lo, hi).into_iter().rev();
        let Some((h, i)) = parts.next() else {
            return Ok(merkle::root(&[]));
        };
        let mut acc = self.subtree(h, i)?;
        for (h, i) in parts {
            acc = merkle::node_hash(&self.subtree(h, i)?, &acc);
        }
        Ok(acc)
    }

    /// The tree's root at `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, TileError> {
        self.range_root(0, size)
    }
}

/// A tile the tree needs is missing or holds too few hashes (the message names it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TileError(String);

impl TileError {
    fn new(why: String) -> TileError {
        TileError(why)
    }
}

/// A 32-byte hash from a 32-byte chunk.
pub fn to_hash(chunk: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(chunk);
    h
}

/// The ranges whose roots an inclusion proof for leaf `m` in a tree of `n` needs.
pub fn inclusion_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    merkle::inclusion_path(m, n, &mut |lo, hi| {
        ranges.push((lo, hi));
        [0; 32]
    });
    ranges
}

/// The ranges whose roots a consistency proof from `m` to `n` needs.
pub fn consistency_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    merkle::consistency_path(m, n, &mut |lo, hi| {
        ranges.push((lo, hi));
        [0; 32]
    });
    ranges
}

/// An inclusion proof from tiles holding [`tiles_for`] its ranges.
pub fn inclusion(m: u64, n: u64, tiles: &Tiles) -> Result<Vec<Hash>, TileError> {
    let mut err = None;
    let path = merkle::inclusion_path(m, n, &mut |lo, hi| {
        tiles.range_root(lo, hi).unwrap_or_else(|e| {
            err.get_or_insert(e);
            [0; 32]
        })
    });
    err.map_or(Ok(path), Err)
}

/// A consistency proof from tiles holding [`tiles_for`] its ranges.
pub fn consistency(m: u64, n: u64, tiles: &Tiles) -> Result<Vec<Hash>, TileError> {
    let mut err = None;
    let path = merkle::consistency_path(m, n, &mut |lo, hi| {
        tiles.range_root(lo, hi).unwrap_or_else(|e| {
            err.get_or_insert(e);
            [0; 32]
        })
    });
    err.map_or(Ok(path), Err)
}

/// Appends `leaves` to a tree of `size` leaves whose right-edge tiles are in `edge`: returns
/// every tile that changed (the right edge and any tiles completed), with its new hashes.
pub fn append(size: u64, edge: &Tiles, leaves: &[Hash]) -> Result<Vec<(TileId, Vec<u8>)>, TileError> {
    let mut out = Vec::new();
    let mut level = 0u32;
    let mut count = size;
    let mut fresh: Vec<Hash> = leaves.to_vec();
    while !fresh.is_empty() {
        let mut id = TileId {
            level,
            index: count / WIDTH,
        };
        let held = (count % WIDTH) as usize;
        let mut tile: Vec<u8> = if held == 0 {
            Vec::with_capacity(WIDTH as usize * 32)
        } else {
            let t = edge
                .0
                .get(&id)
                .ok_or_else(|| TileError::new(format!("the right-edge tile {level}/{} is missing", id.index)))?;
            if t.len() != held * 32 {
                return Err(TileError::new(format!(
                    "the right-edge tile {level}/{} holds {} hashes where the tree of {size} leaves has {held}",
                    id.index,
                    t.len() / 32
                )));
            }
            t.clone()
        };
        let mut parents = Vec::new();
        for h in &fresh {
            tile.extend_from_slice(h);
            if tile.len() == WIDTH as usize * 32 {
                let hashes: Vec<Hash> = tile.chunks_exact(32).map(to_hash).collect();
                parents.push(merkle::root(&hashes));
                out.push((
                    id,
                    std::mem::replace(&mut tile, Vec::with_capacity(WIDTH as usize * 32)),
                ));
                id.index += 1;
            }
        }
        if !tile.is_empty() {
            out.push((id, tile));
        }
        fresh = parents;
        count /= WIDTH;
        level += 1;
    }
    Ok(out)
}

/// A tile's path per tlog-tiles: `tile/<L>/<N>[.p/<W>]`, the index in groups of three digits,
/// all but the last prefixed `x` (1234067 → `x001/x234/067`).
pub fn path(id: TileId, width: u64) -> String {
    let mut groups = vec![format!("{:03}", id.index % 1000)];
    let mut n = id.index / 1000;
    while n > 0 {
        groups.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    groups.reverse();
    let partial = if width < WIDTH {
        format!(".p/{width}")
    } else {
        String::new()
    };
    format!("tile/{}/{}{partial}", id.level, groups.join("/"))
}

/// Parses the part of a tile path after `tile/`: the tile and the width asked for (256 for a
/// full tile). Errors name the part that is wrong.
pub fn parse_path(rest: &str) -> Result<(TileId, u64), (&'static str, String)> {
    let (level, rest) = rest
        .split_once('/')
        .ok_or(("level", "expected tile/<L>/<N>[.p/<W>]".to_string()))?;
    let level: u32 = match level.parse() {
        Ok(l) if l <= 7 && level.len() == 1 => l,
        _ => return Err(("level", format!("{level:?} is not a level from 0 to 7"))),
    };
    let (index, width) = match rest.split_once(".p/") {
        Some((index, w)) => {
            let width: u64 = match w.parse::<u64>() {
                Ok(n) if (1..WIDTH).contains(&n) && n.to_string() == w => n,
                _ => return Err(("width", format!("{w:?} is not a partial width from 1 to 255"))),
            };
            (index, width)
        }
        None => (rest, WIDTH),
    };
    let groups: Vec<&str> = index.split('/').collect();
    let mut n: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let last = i + 1 == groups.len();
        let digits = if last { Some(*g) } else { g.strip_prefix('x') };
        let ok = digits.filter(|d| d.len() == 3 && d.bytes().all(|b| b.is_ascii_digit()));
        let Some(d) = ok else {
            return Err((
                "index",
                format!("{index:?}: each group is three digits, all but the last prefixed x"),
            ));
        };
        n = n
            .checked_mul(1000)
            .and_then(|n| n.checked_add(d.parse::<u64>().unwrap_or(0)))
            .ok_or(("index", format!("{index:?} is out of range")))?;
    }
    if groups.len() > 1 && groups.first() == Some(&"x000") {
        return Err(("index", format!("{index:?} has a leading x000 group")));
    }
    Ok((TileId { level, index: n }, width))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{leaf_hash, root};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    /// Builds tiles by appending `leaves` in batches of `batch`, as the store does.
    fn build(all: &[Hash], batch: usize) -> Tiles {
        let mut tiles = Tiles::default();
        let mut size = 0u64;
        for chunk in all.chunks(batch) {
            for (id, t) in append(size, &tiles, chunk).expect("append") {
                tiles.0.insert(id, t);
            }
            size += chunk.len() as u64;
        }
        tiles
    }

    #[test]
    fn tiles_give_the_same_roots_and_proofs_as_the_whole_tree() {
        let all = leaves(70_000);
        let tiles = build(&all, 1000);
        // Three levels: 274 leaf tiles, two level-1 tiles, one level-2 hash.
        assert_eq!(tiles.0.keys().filter(|t| t.level == 2).count(), 1);
        for n in [1u64, 2, 255, 256, 257, 65_535, 65_536, 65_537, 69_999, 70_000] {
            let expected = root(&all[..n as usize]);
            assert_eq!(tiles.root(n).expect("ok"), expected, "root at {n}");
            for m in [0, n / 3, n - 1] {
                assert_eq!(
                    inclusion(m, n, &tiles).expect("ok"),
                    merkle::inclusion_proof(m as usize, &all[..n as usize]),
                    "inclusion {m}/{n}"
                );
                if m > 0 {
                    assert_eq!(
                        consistency(m, n, &tiles).expect("ok"),
                        merkle::consistency_proof(m as usize, &all[..n as usize]),
                        "consistency {m}->{n}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_proof_reads_at_most_two_tiles_per_level_and_a_head_only_the_right_edge() {
        let n = 10_000_000u64;
        for m in [0, 1, 4_999_999, n - 1] {
            let t = tiles_for(&inclusion_ranges(m, n));
            assert!(t.len() <= 2 * 3, "{m}: {t:?}");
        }
        let t = tiles_for(&consistency_ranges(1_234_567, n));
        assert!(t.len() <= 2 * 3 + 1, "{t:?}");
        let head: Vec<TileId> = tiles_for(&[(0, n)]).into_iter().collect();
        assert_eq!(head, right_edge(n));
    }

    #[test]
    fn an_expanded_tile_gives_the_same_subtree_roots() {
        let all = leaves(700);
        let raw = build(&all, 700);
        let mut cached = raw.clone();
        for id in [TileId { level: 0, index: 0 }, TileId { level: 0, index: 1 }] {
            let e = Expanded::new(&raw.0[&id]);
            assert_eq!(
                e.root().expect("full"),
                merkle::root(&all[id.index as usize * 256..(id.index as usize + 1) * 256])
            );
            cached.0.remove(&id);
            cached.1.insert(id, std::sync::Arc::new(e));
        }
        let edge = TileId { level: 0, index: 2 };
        let partial = Expanded::new(&raw.0[&edge]);
        assert!(!partial.is_full() && partial.root().is_none(), "partial");
        cached.0.remove(&edge);
        cached.1.insert(edge, std::sync::Arc::new(partial));
        for (m, n) in [(3u64, 700u64), (300, 700), (511, 600), (0, 512)] {
            assert_eq!(inclusion(m, n, &cached), inclusion(m, n, &raw), "{m}/{n}");
            assert_eq!(consistency(m + 1, n, &cached), consistency(m + 1, n, &raw), "{m}->{n}");
        }
    }

    #[test]
    fn batch_size_does_not_change_the_tiles() {
        let all = leaves(1_000);
        let one = build(&all, 1);
        let many = build(&all, 300);
        assert_eq!(one.0, many.0);
        assert_eq!(
            right_edge(1_000),
            vec![TileId { level: 0, index: 3 }, TileId { level: 1, index: 0 }]
        );
        assert_eq!(width_in(TileId { level: 0, index: 3 }, 1_000), 1_000 - 768);
    }

    #[test]
    fn a_missing_or_short_edge_tile_is_refused() {
        let all = leaves(300);
        let mut tiles = build(&all, 300);
        tiles.0.remove(&TileId { level: 0, index: 1 });
        let e = append(300, &tiles, &leaves(1)).expect_err("refused");
        assert!(e.to_string().contains("tile 0/1 is missing"), "{e}");
        tiles.0.insert(TileId { level: 0, index: 1 }, vec![0; 32]);
        let e = append(300, &tiles, &leaves(1)).expect_err("refused");
        assert!(e.to_string().contains("holds 1 hashes"), "{e}");
    }

    #[test]
    fn paths_follow_tlog_tiles() {
        let id = |level, index| TileId { level, index };
        assert_eq!(path(id(0, 1_234_067), 256), "tile/0/x001/x234/067");
        assert_eq!(path(id(1, 5), 17), "tile/1/005.p/17");
        assert_eq!(parse_path("0/x001/x234/067"), Ok((id(0, 1_234_067), 256)));
        assert_eq!(parse_path("2/005.p/17"), Ok((id(2, 5), 17)));
        for (bad, part) in [
            ("8/000", "level"),
            ("a/000", "level"),
            ("0/5", "index"),
            ("0/x1/000", "index"),
            ("0/x000/001", "index"),
            ("0/000.p/0", "width"),
            ("0/000.p/256", "width"),
            ("0/000.p/012", "width"),
            ("0", "level"),
        ] {
            assert_eq!(parse_path(bad).map_err(|e| e.0), Err(part), "{bad}");
        }
    }
}
