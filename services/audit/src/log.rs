//! The verifiable log over the `entries` table and its tiles: signed tree heads (Ed25519, and
//! the same heads as C2SP checkpoints), inclusion and consistency proofs read from tiles, and
//! the verification `sharedcare audit verify` runs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sharedcare_kit::db;
use sharedcare_kit::edge::Refuse;
use sharedcare_proto::audit::v1::{AuditEntry, SignedTreeHead};

use crate::merkle::{self, Hash};
use crate::store::{Snapshot, Store, StoredHead, hex, unhex};
use crate::tiles::{self, Expanded, TileId, Tiles};
use crate::{AuditError, note};

/// The bytes a tree head signature covers.
pub fn signed_bytes(size: u64, timestamp_us: i64, root: &Hash) -> Vec<u8> {
    let mut m = b"sharedcare-audit-sth-v1\n".to_vec();
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(&timestamp_us.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// The log: its store, signing key and origin.
#[derive(Clone)]
pub struct Log {
    store: Store,
    key: std::sync::Arc<Ed25519KeyPair>,
    /// The checkpoint origin line and note key name (`sharedcare.<issuer host>/audit`).
    origin: String,
    /// The last head signed here and when a head was last stored; held while signing, so
    /// that heads asked for together are signed once.
    signing: std::sync::Arc<tokio::sync::Mutex<Signing>>,
    /// Full tiles read for proofs, expanded (a full tile never changes): proofs for the same
    /// part of the log read and hash them once. At most [`CACHED_TILES`].
    full_tiles: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<TileId, std::sync::Arc<Expanded>>>>,
}

/// Full tiles kept expanded for proofs (about 16 KiB each).
pub const CACHED_TILES: usize = 1024;

/// How often at most a head signed on request is stored (the periodic signer always stores).
pub const STORE_HEADS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Signing {
    /// The last head signed (or, after a start, stored).
    last: Option<StoredHead>,
    /// The size of the last head stored, and when it was.
    stored: i64,
    stored_at: Option<std::time::Instant>,
}

/// One thing `verify` found wrong, naming the entry, tile or head.
pub type Problem = String;

/// Entries compared per page by `verify`.
const VERIFY_PAGE: i64 = 65_536;

impl Log {
    /// The log over `store`, with its key (made on first use), signing checkpoints as
    /// `origin`. A log stored before tiles is converted (no root changes), and heads signed
    /// before checkpoints get their checkpoint notes.
    pub async fn open(store: Store, origin: &str) -> Result<Log, AuditError> {
        let bad = |why: &str| AuditError::invalid("log_keys.pkcs8", why);
        // A key is made on every start (about 50 µs) and kept only when the log has none.
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| bad("the random number generator failed"))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| bad("a fresh key does not parse"))?;
        let fresh = (B64.encode(pkcs8.as_ref()), B64.encode(pair.public_key().as_ref()));
        let stored = store.log_key(move || fresh).await?;
        let bytes = B64.decode(stored).map_err(|_| bad("not base64"))?;
        let key = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| bad("not an Ed25519 PKCS#8 key"))?;
        store.backfill_leaf_hashes().await?;
        let converted = store.convert_to_tiles().await?;
        if converted > 0 {
            tracing::info!(leaves = converted, "audit log converted to tiles");
        }
        let log = Log {
            store,
            key: std::sync::Arc::new(key),
            origin: origin.to_string(),
            signing: std::sync::Arc::new(tokio::sync::Mutex::new(Signing {
                last: None,
                stored: -1,
                stored_at: None,
            })),
            full_tiles: Default::default(),
        };
        for head in log.store.heads_without_checkpoint().await? {
            if let Some(root) = unhex(&head.root) {
                let note = log.checkpoint_note(head.size as u64, &root);
                log.store.set_checkpoint(head.size, &note).await?;
            }
        }
        Ok(log)
    }

    /// The log's public key.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// The note verifier key a monitor pins (`<origin>+<key id>+<base64 key>`).
    pub fn verifier_key(&self) -> String {
        note::verifier_key(&self.origin, &self.public_key())
    }

    fn checkpoint_note(&self, size: u64, root: &Hash) -> String {
        let body = note::checkpoint_body(&self.origin, size, root);
        let sig = self.key.sign(body.as_bytes());
        note::signed(&body, &self.origin, &self.public_key(), sig.as_ref())
    }

    fn head_message(&self, head: StoredHead) -> SignedTreeHead {
        SignedTreeHead {
            tree_size: head.size as u64,
            root_hash: unhex(&head.root).map(|h| h.to_vec()).unwrap_or_default(),
            timestamp_us: head.timestamp_us,
            signature: B64.decode(&head.signature).unwrap_or_default(),
            public_key: self.public_key(),
            checkpoint: head.checkpoint.unwrap_or_default(),
            verifier_key: self.verifier_key(),
        }
    }

    /// Signs a head for the log as it is now, unless the last head signed already covers it.
    /// Reads only the tiles at the tree's right edge. Heads are stored (and served as the
    /// checkpoint) at most once every [`STORE_HEADS_EVERY`]: a page that asks for a fresh head
    /// on every view still gets one, signed, without a write per view. Any head can be
    /// recomputed from the tiles, and its signature checks with the log's key.
    pub async fn sign_head(&self) -> Result<SignedTreeHead, AuditError> {
        self.sign(false).await
    }

    /// Signs and stores a head for the log as it is now (the periodic signer's).
    pub async fn sign_and_store_head(&self) -> Result<SignedTreeHead, AuditError> {
        self.sign(true).await
    }

    async fn sign(&self, store: bool) -> Result<SignedTreeHead, AuditError> {
        let size = self.store.size().await?;
        let mut state = self.signing.lock().await;
        if state.last.is_none()
            && let Some(head) = self.store.latest_head().await?
        {
            state.stored = head.size;
            state.last = Some(head);
        }
        let head = match &state.last {
            Some(head) if head.size as u64 == size => head.clone(),
            _ => {
                let edge = self.store.tiles(&tiles::right_edge(size).into_iter().collect()).await?;
                let root = edge.root(size).map_err(AuditError::from)?;
                let ts = db::now_us();
                let sig = self.key.sign(&signed_bytes(size, ts, &root));
                StoredHead {
                    size: size as i64,
                    root: hex(&root),
                    timestamp_us: ts,
                    signature: B64.encode(sig.as_ref()),
                    checkpoint: Some(self.checkpoint_note(size, &root)),
                }
            }
        };
        let due = store || state.stored_at.is_none_or(|at| at.elapsed() >= STORE_HEADS_EVERY);
        if due && state.stored != head.size {
            self.store.insert_head(&head).await?;
            state.stored = head.size;
            state.stored_at = Some(std::time::Instant::now());
        }
        state.last = Some(head.clone());
        Ok(self.head_message(head))
    }

    /// The latest signed head (signing the first one if there is none).
    pub async fn latest(&self) -> Result<SignedTreeHead, AuditError> {
        match self.store.latest_head().await? {
            Some(head) => Ok(self.head_message(head)),
            None => Box::pin(self.sign_head()).await,
        }
    }

    /// The latest checkpoint note (C2SP tlog-checkpoint).
    pub async fn checkpoint(&self) -> Result<String, AuditError> {
        Ok(self.latest().await?.checkpoint)
    }

    /// Tile `id` cut to `width` hashes, if the tree has grown that far.
    pub async fn tile(&self, id: TileId, width: u64) -> Result<Option<Vec<u8>>, AuditError> {
        let size = self.latest().await?.tree_size;
        if tiles::width_in(id, size) < width {
            return Ok(None);
        }
        let mut t = self.store.tiles(&[id].into_iter().collect()).await?;
        let bytes =
            t.0.remove(&id)
                .ok_or_else(|| AuditError::Corrupt(format!("tile {}/{} is missing", id.level, id.index)))?;
        let want = width as usize * 32;
        if bytes.len() < want {
            return Err(AuditError::Corrupt(format!(
                "tile {}/{} holds {} hashes, fewer than the tree's {width}",
                id.level,
                id.index,
                bytes.len() / 32
            )));
        }
        Ok(bytes.get(..want).map(<[u8]>::to_vec))
    }

    async fn size_at_least(&self, size: u64, field: &str) -> Result<(), AuditError> {
        let have = self.store.size().await?;
        if size > have {
            return Err(AuditError::invalid(field, format!("the log has only {have} entries")));
        }
        Ok(())
    }

    /// The entry at `index` with its audit path in the tree of `size` leaves, from at most
    /// two tiles per level.
    pub async fn inclusion(&self, index: u64, size: u64) -> Result<(AuditEntry, Vec<Hash>), AuditError> {
        let mut one = self.inclusions(&[index], size).await?;
        Ok(one.remove(0))
    }

    /// The entries at `indexes` with their audit paths in the tree of `size` leaves, in the
    /// order asked: every tile they need and every entry read in one query each.
    pub async fn inclusions(&self, indexes: &[u64], size: u64) -> Result<Vec<(AuditEntry, Vec<Hash>)>, AuditError> {
        let invalid = |f: &str, r: String| AuditError::invalid(f, r);
        if let Some(index) = indexes.iter().find(|i| **i >= size) {
            return Err(invalid("leaf_index", format!("{index} is not below tree_size {size}")));
        }
        self.size_at_least(size, "tree_size").await?;
        let ranges: Vec<(u64, u64)> = indexes.iter().flat_map(|i| tiles::inclusion_ranges(*i, size)).collect();
        let needed = tiles::tiles_for(&ranges);
        let (entries, t) = tokio::try_join!(self.store.entries_at(indexes), self.proof_tiles(needed))?;
        indexes
            .iter()
            .map(|&index| {
                let entry = entries
                    .get(&index)
                    .cloned()
                    .ok_or_else(|| invalid("leaf_index", format!("no entry {index}")))?;
                let path = tiles::inclusion(index, size, &t).map_err(AuditError::from)?;
                Ok((entry, path))
            })
            .collect()
    }

    /// The tiles `needed` for proofs, expanded: full ones from the cache when there, the rest
    /// read.
    async fn proof_tiles(&self, needed: std::collections::BTreeSet<TileId>) -> Result<Tiles, AuditError> {
        let mut t = Tiles::default();
        let mut missing = std::collections::BTreeSet::new();
        {
            let cache = self
                .full_tiles
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in needed {
                match cache.get(&id) {
                    Some(e) => {
                        t.1.insert(id, e.clone());
                    }
                    None => {
                        missing.insert(id);
                    }
                }
            }
        }
        let read = self.store.tiles(&missing).await?;
        let mut cache = self
            .full_tiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Partial tiles are expanded for this request only; full ones are kept.
        for (id, bytes) in read.0 {
            let e = std::sync::Arc::new(Expanded::new(&bytes));
            if e.is_full() {
                if cache.len() >= CACHED_TILES {
                    cache.clear();
                }
                cache.insert(id, e.clone());
            }
            t.1.insert(id, e);
        }
        Ok(t)
    }

    /// The consistency proof between tree sizes `first` ≤ `second`.
    pub async fn consistency(&self, first: u64, second: u64) -> Result<Vec<Hash>, AuditError> {
        if first > second {
            return Err(AuditError::invalid(
                "first",
                format!("{first} is larger than second ({second})"),
            ));
        }
        self.size_at_least(second, "second").await?;
        let t = self
            .proof_tiles(tiles::tiles_for(&tiles::consistency_ranges(first, second)))
            .await?;
        tiles::consistency(first, second, &t).map_err(AuditError::from)
    }

    /// Rechecks the whole log a page at a time: each entry against its leaf hash in the tiles
    /// (and their dense order), each tile against the tile above, and every signed tree head
    /// (root, signature and checkpoint note) against the tiles. Returns what is wrong, naming
    /// entries, tiles and heads.
    pub async fn verify(&self) -> Result<(usize, usize, Vec<Problem>), AuditError> {
        let mut problems = Vec::new();
        // Everything as of one moment: a live log goes on growing while it is checked.
        let mut snap = self.store.snapshot().await?;
        let size = snap.size().await?;
        let count = snap.entry_count().await? as u64;
        if count != size {
            problems.push(format!(
                "the entries table holds {count} entries but the tree {size} leaves; entries were added or removed outside the log"
            ));
        }
        // Entries against level 0.
        let mut from = 0i64;
        while (from as u64) < count {
            let to = (from + VERIFY_PAGE).min(count as i64);
            let entries = snap.entries_between(from, to).await?;
            let first_tile = from as u64 / tiles::WIDTH;
            let tiles_needed = (to as u64).div_ceil(tiles::WIDTH) - first_tile;
            let level0: std::collections::HashMap<u64, Vec<u8>> = snap
                .tiles_from(0, first_tile, tiles_needed as i64)
                .await?
                .into_iter()
                .collect();
            let mut expected = from as u64;
            for e in &entries {
                if e.leaf_index != expected {
                    problems.push(format!(
                        "entry at position {expected} is missing: the next entry found is leaf {} (event {}); entries were removed or reordered",
                        e.leaf_index as i64, e.event_id
                    ));
                    expected = e.leaf_index;
                }
                let recomputed = merkle::leaf_hash(crate::leaf::leaf_data(e).as_bytes());
                let i = e.leaf_index;
                let stored = level0
                    .get(&(i / tiles::WIDTH))
                    .and_then(|t| t.get((i % tiles::WIDTH) as usize * 32..(i % tiles::WIDTH + 1) as usize * 32));
                match stored {
                    None if i < size => problems.push(format!(
                        "tile 0/{} is missing or short: it should hold leaf {i}",
                        i / tiles::WIDTH
                    )),
                    Some(h) if h != recomputed => problems.push(format!(
                        "entry {i} (event {}, sequence {}) was altered, or leaf {i} in tile 0/{} was: the entry does not hash to the leaf recorded when it was appended",
                        e.event_id,
                        e.sequence,
                        i / tiles::WIDTH
                    )),
                    _ => {}
                }
                expected += 1;
            }
            if entries.is_empty() {
                break;
            }
            from = to;
        }
        // Each level's full tiles against the hashes one level up, and every tile's width.
        let mut level = 0u32;
        while tiles::hashes_at(level, size) > 0 {
            let mut roots: Vec<Hash> = Vec::new();
            let mut next = 0u64;
            loop {
                let page = snap.tiles_from(level, next, 1024).await?;
                let Some(last) = page.last().map(|(i, _)| *i) else {
                    break;
                };
                for (index, hashes) in &page {
                    let id = TileId { level, index: *index };
                    if *index != next {
                        problems.push(format!("tile {level}/{next} is missing"));
                    }
                    let want = tiles::width_in(id, size) as usize;
                    if hashes.len() != want * 32 {
                        problems.push(format!(
                            "tile {level}/{index} holds {} hashes where the tree of {size} leaves has {want}",
                            hashes.len() / 32
                        ));
                    }
                    if hashes.len() == tiles::WIDTH as usize * 32 {
                        let h: Vec<Hash> = hashes.chunks_exact(32).map(tiles::to_hash).collect();
                        roots.push(merkle::root(&h));
                    }
                    next = index + 1;
                }
                next = next.max(last + 1);
            }
            let mut above = 0u64;
            loop {
                let page = snap.tiles_from(level + 1, above, 1024).await?;
                let Some(last) = page.last().map(|(i, _)| *i) else {
                    break;
                };
                for (index, hashes) in &page {
                    for (j, h) in hashes.chunks_exact(32).enumerate() {
                        let position = index * tiles::WIDTH + j as u64;
                        if roots.get(position as usize).is_some_and(|r| r.as_slice() != h) {
                            problems.push(format!(
                                "tile {}/{index} hash {j} does not match the root of tile {level}/{position} below it: a tile was altered",
                                level + 1
                            ));
                        }
                    }
                }
                above = last + 1;
            }
            level += 1;
        }
        // Heads against the tiles, a page at a time, smallest first: consecutive heads share
        // most of their right-edge tiles, so each tile is read about once.
        let public = UnparsedPublicKey::new(&ED25519, self.public_key());
        let mut seen: std::collections::HashMap<TileId, Vec<u8>> = std::collections::HashMap::new();
        let (mut heads, mut after) = (0usize, -1i64);
        loop {
            let page = snap.heads_after(after, 1_000).await?;
            let Some(last) = page.last() else { break };
            after = last.size;
            heads += page.len();
            for head in &page {
                if let Some(p) = self.check_head(&mut snap, head, size, &public, &mut seen).await? {
                    problems.push(p);
                }
            }
        }
        Ok((count as usize, heads, problems))
    }

    /// What is wrong with one signed tree head, checked against the log's key and the tiles
    /// (read into `seen`, which is cleared when it grows large).
    async fn check_head(
        &self,
        snap: &mut Snapshot,
        head: &StoredHead,
        size: u64,
        public: &UnparsedPublicKey<Vec<u8>>,
        seen: &mut std::collections::HashMap<TileId, Vec<u8>>,
    ) -> Result<Option<Problem>, AuditError> {
        let n = head.size as u64;
        let Some(expected) = unhex(&head.root) else {
            return Ok(Some(format!("tree head {n}: root is not a hash")));
        };
        let signature = B64.decode(&head.signature).unwrap_or_default();
        if public
            .verify(&signed_bytes(n, head.timestamp_us, &expected), &signature)
            .is_err()
        {
            return Ok(Some(format!("tree head {n}: the signature does not verify")));
        }
        if let Some(cp) = &head.checkpoint {
            let name = cp.split('\n').next().unwrap_or_default();
            let key = note::VerifierKey {
                name: name.to_string(),
                id: note::key_id(name, &self.public_key()),
                key: self.public_key(),
            };
            match note::open_checkpoint(cp, &key) {
                Err(e) => return Ok(Some(format!("tree head {n}: its checkpoint: {e}"))),
                Ok(c) if c.size != n || c.root != expected => {
                    return Ok(Some(format!(
                        "tree head {n}: its checkpoint names size {} and another root",
                        c.size
                    )));
                }
                Ok(_) => {}
            }
        }
        if n > size {
            return Ok(Some(format!(
                "tree head {n}: the log holds only {size} entries; entries were removed"
            )));
        }
        let needed = tiles::tiles_for(&[(0, n)]);
        if seen.len() + needed.len() > CACHED_TILES {
            seen.clear();
        }
        let missing: std::collections::BTreeSet<TileId> =
            needed.iter().filter(|id| !seen.contains_key(id)).copied().collect();
        let read = snap.tiles(&missing).await?;
        seen.extend(read.0);
        let t = Tiles(
            needed
                .iter()
                .filter_map(|id| seen.get(id).map(|b| (*id, b.clone())))
                .collect(),
            Default::default(),
        );
        Ok(match t.root(n) {
            Ok(root) if root == expected => None,
            Ok(_) => Some(format!(
                "tree head {n}: the tiles now stored do not produce its root; entries or tiles before {n} were altered, removed or reordered"
            )),
            Err(e) => Some(format!("tree head {n}: {e}")),
        })
    }
}
