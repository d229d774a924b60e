//! Inclusion and consistency proofs for generated trees of every size up to 600 (proptest),
//! checked by a verifier written here from RFC 9162 §2.1.3.2 and §2.1.4.2 (hashes from `sha2`
//! directly, roots by the RFC's own recursion), independent of the audit service's code; and
//! every altered proof refused by both.
// Test code: a panic is a failed test.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use sharedcare_audit::merkle;

type Hash = [u8; 32];

fn h(parts: &[&[u8]]) -> Hash {
    let mut d = Sha256::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

fn node(l: &Hash, r: &Hash) -> Hash {
    h(&[&[1], l, r])
}

/// MTH(D[n]) (RFC 9162 §2.1.1).
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => h(&[]),
        1 => leaves[0],
        n => {
            // k: the largest power of two smaller than n.
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.2.
fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// RFC 9162 §2.1.4.2 (with the empty proof between equal sizes).
fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 || first > second || proof.is_empty() {
        return false;
    }
    let mut path = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, *first_root);
    }
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
}

fn leaves(n: usize, seed: u64) -> Vec<Hash> {
    (0..n as u64)
        .map(|i| h(&[&[0], format!("entry {seed}/{i}").as_bytes()]))
        .collect()
}

/// One byte of one hash of `proof` flipped.
fn altered(proof: &[Hash], which: usize, byte: usize) -> Vec<Hash> {
    let mut p = proof.to_vec();
    let i = which % p.len();
    p[i][byte % 32] ^= 0x01;
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn every_inclusion_proof_verifies_independently_and_an_altered_one_does_not(
        n in 1usize..600, pick in any::<usize>(), seed in any::<u64>(), which in any::<usize>(), byte in any::<usize>(),
    ) {
        let tree = leaves(n, seed);
        let root = merkle::root(&tree);
        prop_assert_eq!(root, mth(&tree), "the service's root is RFC 9162's");
        let m = pick % n;
        let proof = merkle::inclusion_proof(m, &tree);
        prop_assert!(verify_inclusion(m as u64, n as u64, &tree[m], &proof, &root));
        prop_assert!(merkle::verify_inclusion(m as u64, n as u64, &tree[m], &proof, &root));
        if n > 1 {
            let other = (m + 1) % n;
            prop_assert!(!verify_inclusion(other as u64, n as u64, &tree[m], &proof, &root), "another index");
            prop_assert!(!merkle::verify_inclusion(other as u64, n as u64, &tree[m], &proof, &root));
            let bad = altered(&proof, which, byte);
            prop_assert!(!verify_inclusion(m as u64, n as u64, &tree[m], &bad, &root), "an altered proof");
            prop_assert!(!merkle::verify_inclusion(m as u64, n as u64, &tree[m], &bad, &root));
        }
    }

    #[test]
    fn every_consistency_proof_verifies_independently_and_an_altered_one_does_not(
        n in 1usize..600, pick in any::<usize>(), seed in any::<u64>(), which in any::<usize>(), byte in any::<usize>(),
    ) {
        let tree = leaves(n, seed);
        let m = 1 + pick % n;
        let (first, second) = (mth(&tree[..m]), mth(&tree));
        let proof = merkle::consistency_proof(m, &tree);
        prop_assert!(verify_consistency(m as u64, n as u64, &first, &second, &proof), "m={m} n={n}");
        prop_assert!(merkle::verify_consistency(m as u64, n as u64, &first, &second, &proof));
        if m < n {
            let bad = altered(&proof, which, byte);
            prop_assert!(!verify_consistency(m as u64, n as u64, &first, &second, &bad), "an altered proof");
            prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &first, &second, &bad));
            // A rewritten history: the first tree with one entry changed.
            let mut rewritten = tree[..m].to_vec();
            rewritten[pick % m][0] ^= 0x80;
            let forged = mth(&rewritten);
            prop_assert!(!verify_consistency(m as u64, n as u64, &forged, &second, &proof), "a rewritten first tree");
            prop_assert!(!merkle::verify_consistency(m as u64, n as u64, &forged, &second, &proof));
        }
    }
}
