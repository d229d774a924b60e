//! The audit log as a Merkle tree, as Certificate Transparency keeps its logs
//! ([RFC 6962 §2.1] / [RFC 9162 §2.1]): leaf hash `SHA-256(0x00 ‖ leaf)`, node hash
//! `SHA-256(0x01 ‖ left ‖ right)`, the left subtree always the largest power of two.
//! Inclusion proofs show an entry is in a signed tree head; consistency proofs show a later
//! head extends an earlier one without rewriting it. Pure functions, no I/O.
//!
//! [RFC 6962 §2.1]: https://www.rfc-editor.org/rfc/rfc6962#section-2.1
//! [RFC 9162 §2.1]: https://www.rfc-editor.org/rfc/rfc9162#section-2.1

use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH over leaf hashes (the empty tree's root is SHA-256 of nothing).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => Sha256::digest([]).into(),
        [one] => *one,
        _ => {
            let (left, right) = leaves.split_at(split(leaves.len()));
            node_hash(&root(left), &root(right))
        }
    }
}

/// The audit path for leaf `m` in the tree of `leaves` (RFC 6962 PATH(m, D[n])).
pub fn inclusion_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    inclusion_path(m as u64, leaves.len() as u64, &mut |lo, hi| {
        root(leaves.get(lo as usize..hi as usize).unwrap_or_default())
    })
}

/// The consistency proof from the first `m` leaves to all of `leaves` (RFC 6962 PROOF(m, D[n])).
pub fn consistency_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    consistency_path(m as u64, leaves.len() as u64, &mut |lo, hi| {
        root(leaves.get(lo as usize..hi as usize).unwrap_or_default())
    })
}

/// PATH(m, D[n]) with the root of leaves `lo..hi` from `root_of(lo, hi)`: the same recursion
/// over whole leaves or over stored tiles. The ranges asked for depend only on `m` and `n`.
pub fn inclusion_path(m: u64, n: u64, root_of: &mut impl FnMut(u64, u64) -> Hash) -> Vec<Hash> {
    fn path(m: u64, lo: u64, hi: u64, root_of: &mut impl FnMut(u64, u64) -> Hash, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n <= 1 {
            return;
        }
        let k = split(n as usize) as u64;
        if m < k {
            path(m, lo, lo + k, root_of, out);
            out.push(root_of(lo + k, hi));
        } else {
            path(m - k, lo + k, hi, root_of, out);
            out.push(root_of(lo, lo + k));
        }
    }
    let mut out = Vec::new();
    if m < n {
        path(m, 0, n, root_of, &mut out);
    }
    out
}

/// PROOF(m, D[n]) with subtree roots from `root_of(lo, hi)`, as [`inclusion_path`].
pub fn consistency_path(m: u64, n: u64, root_of: &mut impl FnMut(u64, u64) -> Hash) -> Vec<Hash> {
    fn sub(m: u64, lo: u64, hi: u64, complete: bool, root_of: &mut impl FnMut(u64, u64) -> Hash, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(root_of(lo, hi));
            }
            return;
        }
        let k = split(n as usize) as u64;
        if m <= k {
            sub(m, lo, lo + k, complete, root_of, out);
            out.push(root_of(lo + k, hi));
        } else {
            sub(m - k, lo + k, hi, false, root_of, out);
            out.push(root_of(lo, lo + k));
        }
    }
    let mut out = Vec::new();
    if m > 0 && m < n {
        sub(m, 0, n, true, root_of, &mut out);
    }
    out
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root_hash: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root_hash
}

/// Checks a consistency proof between two tree heads (RFC 9162 §2.1.4.2).
pub fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 || first > second || proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut f_n, mut s_n) = (first - 1, second - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let Some((&start, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (start, start);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && fr == *first_root && sr == *second_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    #[test]
    fn the_empty_tree_and_rfc6962_leaf_hash() {
        let hex = |h: &Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(&root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // CT's test vector: the leaf hash of the empty string.
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn every_inclusion_and_consistency_proof_checks_and_a_wrong_one_does_not() {
        for n in 1..=20 {
            let l = leaves(n);
            let r = root(&l);
            for m in 0..n {
                let p = inclusion_proof(m, &l);
                assert!(verify_inclusion(m as u64, n as u64, &l[m], &p, &r), "inclusion {m}/{n}");
                let other = leaf_hash(b"not in the log");
                assert!(!verify_inclusion(m as u64, n as u64, &other, &p, &r));
            }
            for m in 1..=n {
                let p = consistency_proof(m, &l);
                let old = root(&l[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &r, &p),
                    "consistency {m}->{n}"
                );
                if m < n {
                    let rewritten = root(&leaves(m + 1)[1..]);
                    assert!(!verify_consistency(m as u64, n as u64, &rewritten, &r, &p));
                }
            }
        }
    }
}
