//! Retrieval: fusion, merging, file-level results and packing, and a golden query set on a
//! fixture repository (BM25 and hybrid with a stand-in embedder).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::index::tests::{HashEmbedder, fixture};
use crate::index::{self, ChunkHit};

fn hit(path: &str, chunk: u32) -> ChunkHit {
    ChunkHit {
        path: path.into(),
        start_line: chunk * 10 + 1,
        end_line: chunk * 10 + 10,
        symbol: String::new(),
        language: "rust".into(),
        kind: "function".into(),
        blob: format!("blob-{path}"),
        chunk,
        text: format!("chunk {chunk} of {path}\n"),
        score: 0.0,
    }
}

#[test]
fn fusion_rewards_chunks_both_rankings_agree_on() {
    let bm25 = vec![hit("a.rs", 0), hit("b.rs", 0), hit("c.rs", 0)];
    let vector = vec![hit("c.rs", 0), hit("b.rs", 0), hit("d.rs", 0)];
    let fused = fuse(&[(1.0, bm25.clone()), (1.0, vector.clone())], 60.0);
    let mut order: Vec<&str> = fused.iter().map(|f| f.hit.path.as_str()).collect();
    order[..2].sort_unstable();
    assert_eq!(order[..2], ["b.rs", "c.rs"]);
    assert_eq!(order.len(), 4);
    // Weights shift the balance.
    let fused = fuse(&[(1.0, bm25), (0.0, vector)], 60.0);
    assert_eq!(fused[0].hit.path, "a.rs");
}

#[test]
fn adjacent_chunks_of_a_file_merge_into_one_result() {
    let fused = fuse(
        &[(
            1.0,
            vec![
                hit("a.rs", 1),
                hit("b.rs", 0),
                hit("a.rs", 2),
                hit("a.rs", 7),
            ],
        )],
        60.0,
    );
    let params = Params {
        limit: 10,
        ..Params::default()
    };
    let results = finish(fused.clone(), &params);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].path, "a.rs");
    assert_eq!((results[0].start_line, results[0].end_line), (11, 30));
    assert_eq!(results[0].snippet, "chunk 1 of a.rs\nchunk 2 of a.rs\n");
    let files = finish(
        fused,
        &Params {
            files: true,
            limit: 10,
            ..Params::default()
        },
    );
    let paths: Vec<&str> = files.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["a.rs", "b.rs"]);
}

#[test]
fn packing_keeps_to_the_budget_in_rank_order() {
    let results: Vec<SearchResult> = (0..5)
        .map(|i| result(&hit(&format!("f{i}.rs"), 0), 1.0 / f64::from(i + 1)))
        .collect();
    let one = approx_tokens(&format_block(&results[0]));
    let packed = pack(&results, one * 2 + 1, &approx_tokens);
    assert!(approx_tokens(&packed) <= one * 2 + 1);
    assert!(packed.contains("f0.rs:1-10") && packed.contains("f1.rs:1-10"));
    assert!(!packed.contains("f2.rs"));
    assert!(packed.contains("```rust\nchunk 0 of f0.rs\n```"));
    assert_eq!(pack(&results, 0, &approx_tokens), "");
}

const FILES: &[(&str, &str)] = &[
    (
        "src/auth/session.rs",
        "/// Refreshes an expired session token with the identity provider.\npub fn refresh_session_token(user: &User) -> Token {\n    provider().renew(user.token())\n}\n",
    ),
    (
        "src/storage/cache.rs",
        "pub struct LruCache { capacity: usize }\n\nimpl LruCache {\n    /// Drops the least recently used entry when full.\n    pub fn evict_oldest(&mut self) {}\n}\n",
    ),
    (
        "server/routes.py",
        "def register_routes(app):\n    \"\"\"Attach the HTTP handlers for the REST API.\"\"\"\n    app.add_route('/users', list_users)\n",
    ),
    (
        "web/src/components/DatePicker.tsx",
        "export function DatePicker(props: Props) {\n  const [open, setOpen] = useState(false);\n  return <Calendar onSelect={props.onChange} />;\n}\n",
    ),
    (
        "cmd/migrate/main.go",
        "package main\n\n// runMigrations applies pending database schema migrations.\nfunc runMigrations(db *sql.DB) error {\n\treturn nil\n}\n",
    ),
    (
        "docs/deploy.md",
        "# Deploying\n\n## Kubernetes\n\nApply the manifests in deploy/k8s with kubectl.\n",
    ),
];

const GOLDEN: &[(&str, &str)] = &[
    ("refresh expired session token", "src/auth/session.rs"),
    ("LruCache evict", "src/storage/cache.rs"),
    ("least recently used cache eviction", "src/storage/cache.rs"),
    ("register REST API routes", "server/routes.py"),
    (
        "DatePicker calendar component",
        "web/src/components/DatePicker.tsx",
    ),
    ("database schema migrations", "cmd/migrate/main.go"),
    ("deploy to kubernetes", "docs/deploy.md"),
    ("run_migrations", "cmd/migrate/main.go"),
];

fn golden_top5(retriever: &mut Retriever, mode: SearchMode) {
    let params = Params {
        mode,
        limit: 5,
        files: true,
        ..Params::default()
    };
    for (query, want) in GOLDEN {
        let results = retriever.search(query, &params).unwrap();
        let paths: Vec<&str> = results.iter().map(|r| r.path.as_str()).collect();
        assert!(
            paths.contains(want),
            "{mode:?} `{query}`: {want} not in {paths:?}"
        );
    }
}

#[test]
fn golden_queries_find_their_files_in_the_top_5_with_bm25_and_hybrid() {
    let (dir, _repo) = fixture(FILES);
    let opts = index::Options::default();
    index::update(dir.path(), &opts, &mut |_| {}).unwrap();

    let mut bm25 = Retriever::open(dir.path(), None).unwrap();
    assert!(bm25.vectors_unavailable().is_some());
    golden_top5(&mut bm25, SearchMode::Bm25);
    // Hybrid without vectors answers with BM25; vector mode says what to do.
    golden_top5(&mut bm25, SearchMode::Hybrid);
    let err = bm25
        .search(
            "x",
            &Params {
                mode: SearchMode::Vector,
                ..Params::default()
            },
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("vector search is not available"),
        "{err}"
    );

    let mut model = HashEmbedder {
        calls: 0,
        fail_after: None,
    };
    index::vectors::embed_missing(dir.path(), &opts, &mut model, &mut |_| {}).unwrap();
    let embedder = Box::new(HashEmbedder {
        calls: 0,
        fail_after: None,
    });
    let mut hybrid = Retriever::open(dir.path(), Some(embedder)).unwrap();
    assert!(hybrid.vectors_unavailable().is_none());
    golden_top5(&mut hybrid, SearchMode::Hybrid);
    let results = hybrid
        .search(
            "LruCache evict_oldest",
            &Params {
                mode: SearchMode::Vector,
                limit: 1,
                ..Params::default()
            },
        )
        .unwrap();
    assert_eq!(results[0].path, "src/storage/cache.rs");
}

#[test]
fn searching_a_repository_without_an_index_names_the_fix() {
    let (dir, _repo) = fixture(FILES);
    let err = Retriever::open(dir.path(), None).unwrap_err().to_string();
    assert!(
        err.contains("no index at") && err.contains("troupe index"),
        "{err}"
    );
}
