//! What an independent monitor checks of each new checkpoint (`sharedcare audit monitor`),
//! given the tiles it fetched: every tile holding hashes new since the last checkpoint it saw
//! (all of them the first time), each full one against the hash above it; the tree's root at
//! the checkpoint's size; and a consistency proof, built from the same tiles, between the two
//! checkpoints. Pure functions; the fetching is the caller's.

use std::collections::BTreeSet;

use crate::merkle;
use crate::note::Checkpoint;
use crate::tiles::{self, TileId, Tiles};

/// Why a checkpoint was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// The log now shows a history that contradicts one it signed before.
    Forked(String),
    /// The log shows a smaller tree than it signed before.
    WentBack(String),
    /// A served tile does not match the tree or the checkpoint.
    BadTile(String),
}

impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alarm::Forked(m) => write!(f, "THE LOG FORKED: {m}"),
            Alarm::WentBack(m) => write!(f, "THE LOG WENT BACK: {m}"),
            Alarm::BadTile(m) => write!(f, "A TILE DOES NOT MATCH: {m}"),
        }
    }
}

/// The tiles (with the width each has at `to` leaves) a monitor fetches to check the tree's
/// growth from `from` to `to` leaves.
pub fn tiles_to_fetch(from: u64, to: u64) -> Vec<(TileId, u64)> {
    let mut ids: BTreeSet<TileId> = BTreeSet::new();
    let mut level = 0;
    loop {
        let (old, new) = (tiles::hashes_at(level, from), tiles::hashes_at(level, to));
        if new == 0 {
            break;
        }
        if new > old {
            for index in old / tiles::WIDTH..=(new - 1) / tiles::WIDTH {
                ids.insert(TileId { level, index });
            }
        }
        level += 1;
    }
    ids.extend(tiles::tiles_for(&[(0, to)]));
    if from > 0 && from < to {
        ids.extend(tiles::tiles_for(&tiles::consistency_ranges(from, to)));
    }
    ids.into_iter().map(|id| (id, tiles::width_in(id, to))).collect()
}

/// Checks `cp` against the fetched `tiles` and, when there is one, the checkpoint seen before.
pub fn check(previous: Option<&Checkpoint>, cp: &Checkpoint, tiles: &Tiles) -> Result<(), Alarm> {
    if let Some(prev) = previous {
        if cp.size < prev.size {
            return Err(Alarm::WentBack(format!(
                "checkpoint of {} entries after one of {} entries",
                cp.size, prev.size
            )));
        }
        if cp.size == prev.size && cp.root != prev.root {
            return Err(Alarm::Forked(format!(
                "two checkpoints of {} entries with different roots",
                cp.size
            )));
        }
    }
    for (id, bytes) in &tiles.0 {
        if bytes.len() != tiles::WIDTH as usize * 32 {
            continue;
        }
        let above = TileId {
            level: id.level + 1,
            index: id.index / tiles::WIDTH,
        };
        let offset = (id.index % tiles::WIDTH) as usize * 32;
        if let Some(parent) = tiles.0.get(&above).and_then(|t| t.get(offset..offset + 32)) {
            let hashes: Vec<merkle::Hash> = bytes.chunks_exact(32).map(tiles::to_hash).collect();
            if merkle::root(&hashes).as_slice() != parent {
                return Err(Alarm::BadTile(format!(
                    "tile {}/{} does not hash to hash {} of tile {}/{} above it",
                    id.level,
                    id.index,
                    id.index % tiles::WIDTH,
                    above.level,
                    above.index
                )));
            }
        }
    }
    let root = tiles.root(cp.size).map_err(|e| Alarm::BadTile(e.to_string()))?;
    if root != cp.root {
        return Err(Alarm::BadTile(format!(
            "the tiles give another root than the checkpoint of {} entries",
            cp.size
        )));
    }
    if let Some(prev) = previous
        && prev.size > 0
        && prev.size < cp.size
    {
        let proof = tiles::consistency(prev.size, cp.size, tiles).map_err(|e| Alarm::BadTile(e.to_string()))?;
        if !merkle::verify_consistency(prev.size, cp.size, &prev.root, &cp.root, &proof) {
            return Err(Alarm::Forked(format!(
                "the checkpoint of {} entries is not consistent with the one of {} entries seen before: \
                 entries before {} were changed, removed or reordered",
                cp.size, prev.size, prev.size
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn tree(n: u64) -> (Tiles, Checkpoint) {
        let leaves: Vec<merkle::Hash> = (0..n).map(|i| leaf_hash(format!("e{i}").as_bytes())).collect();
        let mut t = Tiles::default();
        for (id, bytes) in tiles::append(0, &t, &leaves).expect("append") {
            t.0.insert(id, bytes);
        }
        let cp = Checkpoint {
            origin: "o".into(),
            size: n,
            root: merkle::root(&leaves),
        };
        (t, cp)
    }

    /// The fetched subset at `to`'s widths.
    fn fetched(all: &Tiles, from: u64, to: u64) -> Tiles {
        Tiles(
            tiles_to_fetch(from, to)
                .into_iter()
                .map(|(id, w)| (id, all.0[&id][..w as usize * 32].to_vec()))
                .collect(),
            Default::default(),
        )
    }

    #[test]
    fn growth_checks_and_forks_go_back_and_bad_tiles_are_named() {
        let (all, cp) = tree(1_000);
        let (_, old) = tree(300);
        assert_eq!(check(None, &cp, &fetched(&all, 0, 1_000)), Ok(()));
        assert_eq!(check(Some(&old), &cp, &fetched(&all, 300, 1_000)), Ok(()));
        // Another history of 300 entries signed before.
        let mut other = old.clone();
        other.root = [9; 32];
        assert!(matches!(
            check(Some(&other), &cp, &fetched(&all, 300, 1_000)),
            Err(Alarm::Forked(_))
        ));
        assert!(matches!(
            check(Some(&cp), &old, &fetched(&all, 0, 300)),
            Err(Alarm::WentBack(_))
        ));
        let mut forged = fetched(&all, 0, 1_000);
        if let Some(t) = forged.0.get_mut(&TileId { level: 0, index: 1 }) {
            t[0] ^= 1;
        }
        assert_eq!(
            check(None, &cp, &forged),
            Err(Alarm::BadTile(
                "tile 0/1 does not hash to hash 1 of tile 1/0 above it".into()
            ))
        );
    }
}
