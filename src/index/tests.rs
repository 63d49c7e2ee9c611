//! Index behaviour on fixture repositories built with git2 in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use git2::{IndexAddOption, Repository, Signature};

use super::scan::SkipReason;
use super::vectors::{self, Embed, VectorStore};
use super::*;

/// A git repository in a temp dir with `files` committed on `main`.
pub(crate) fn fixture(files: &[(&str, &str)]) -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init_opts(
        dir.path(),
        git2::RepositoryInitOptions::new().initial_head("main"),
    )
    .unwrap();
    {
        let mut cfg = repo.config().unwrap();
        cfg.set_str("user.name", "troupe test").unwrap();
        cfg.set_str("user.email", "test@troupe.invalid").unwrap();
    }
    write(dir.path(), files);
    commit_all(&repo, "initial");
    (dir, repo)
}

pub(crate) fn write(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
}

pub(crate) fn commit_all(repo: &Repository, message: &str) {
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"].iter(), IndexAddOption::DEFAULT, None)
        .unwrap();
    index.update_all(["*"].iter(), None).unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("troupe test", "test@troupe.invalid").unwrap();
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
        .unwrap();
}

fn checkout(repo: &Repository, branch: &str, create: bool) {
    if create {
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        repo.branch(branch, &head, false).unwrap();
    }
    repo.set_head(&format!("refs/heads/{branch}")).unwrap();
    repo.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .unwrap();
}

fn opts() -> Options {
    Options {
        lock_timeout: Duration::from_secs(30),
        ..Options::default()
    }
}

fn index(root: &Path) -> Summary {
    update(root, &opts(), &mut |_| {}).unwrap()
}

/// Paths of the top `n` BM25 hits (distinct, in order).
fn top_files(root: &Path, query: &str, n: usize) -> Vec<String> {
    let reader = TextReader::open(&text_dir(&index_dir(root))).unwrap();
    let mut out: Vec<String> = Vec::new();
    for h in reader.search(query, 50).unwrap() {
        if !out.contains(&h.path) {
            out.push(h.path);
        }
    }
    out.truncate(n);
    out
}

fn indexed_paths(root: &Path) -> Vec<String> {
    let m = manifest::Manifest::load(&index_dir(root)).unwrap();
    m.files
        .iter()
        .filter(|(_, f)| f.skip.is_none())
        .map(|(p, _)| p.clone())
        .collect()
}

const LIB: &str = "/// Parses the configuration file.\npub fn parse_config(text: &str) -> Config {\n    Config::default()\n}\n";
const NET: &str =
    "pub struct HttpClient;\n\nimpl HttpClient {\n    pub fn send_request(&self) {}\n}\n";
const PY: &str = "class TokenBucket:\n    def take(self, n):\n        return n\n";

#[test]
fn a_first_run_indexes_every_file_and_search_finds_identifier_parts() {
    let (dir, _repo) = fixture(&[("src/config.rs", LIB), ("src/net.rs", NET), ("rate.py", PY)]);
    let s = index(dir.path());
    assert_eq!(s.files, 3);
    assert!(s.rebuilt);
    assert_eq!(s.languages.get("rust"), Some(&2));
    assert_eq!(s.languages.get("python"), Some(&1));
    assert_eq!(top_files(dir.path(), "parse config", 1), ["src/config.rs"]);
    assert_eq!(
        top_files(dir.path(), "http client request", 1),
        ["src/net.rs"]
    );
    assert_eq!(top_files(dir.path(), "token bucket", 1), ["rate.py"]);
    assert_eq!(top_files(dir.path(), "HttpClient", 1), ["src/net.rs"]);
    // `.troupe/` carries its own ignore file (git hides the directory; libgit2 lists it, which
    // is why the scan skips it explicitly).
    assert!(dir.path().join(".troupe/.gitignore").is_file());
}

#[test]
fn unchanged_content_is_never_chunked_again() {
    let (dir, _repo) = fixture(&[("src/config.rs", LIB), ("src/net.rs", NET)]);
    index(dir.path());
    let s = index(dir.path());
    assert_eq!((s.updated, s.removed, s.chunked), (0, 0, 0));
    assert!(!s.rebuilt);
    assert_eq!(s.files, 2);
    // A copy of known content is indexed under its new path without chunking.
    write(dir.path(), &[("src/copy.rs", LIB)]);
    let s = index(dir.path());
    assert_eq!((s.updated, s.chunked), (1, 0));
    assert!(top_files(dir.path(), "parse config", 5).contains(&"src/copy.rs".to_string()));
}

#[test]
fn modify_delete_and_rename_are_reflected() {
    let (dir, repo) = fixture(&[("src/config.rs", LIB), ("src/net.rs", NET), ("rate.py", PY)]);
    index(dir.path());

    write(
        dir.path(),
        &[("src/net.rs", "pub fn open_socket_listener() {}\n")],
    );
    std::fs::remove_file(dir.path().join("rate.py")).unwrap();
    std::fs::rename(
        dir.path().join("src/config.rs"),
        dir.path().join("src/settings.rs"),
    )
    .unwrap();
    commit_all(&repo, "change");
    let s = index(dir.path());
    assert_eq!(s.removed, 2, "rate.py and the old config.rs");
    assert_eq!(s.chunked, 1, "only the modified file is chunked");
    assert_eq!(indexed_paths(dir.path()), ["src/net.rs", "src/settings.rs"]);
    assert_eq!(top_files(dir.path(), "socket listener", 1), ["src/net.rs"]);
    assert!(top_files(dir.path(), "HttpClient", 5).is_empty());
    assert!(top_files(dir.path(), "TokenBucket", 5).is_empty());
    assert_eq!(
        top_files(dir.path(), "parse config", 5),
        ["src/settings.rs"]
    );
}

#[test]
fn uncommitted_edits_and_untracked_files_are_visible() {
    let (dir, _repo) = fixture(&[("src/config.rs", LIB)]);
    index(dir.path());
    write(
        dir.path(),
        &[
            ("src/config.rs", "pub fn load_yaml_settings() {}\n"),
            ("src/new_module.rs", "pub fn brand_new_thing() {}\n"),
        ],
    );
    let st = status(dir.path(), &opts()).unwrap();
    assert_eq!(st.changed, ["src/config.rs"]);
    assert_eq!(st.added, ["src/new_module.rs"]);
    assert!(st.is_stale());
    let s = index(dir.path());
    assert_eq!(s.updated, 2);
    assert_eq!(top_files(dir.path(), "yaml settings", 1), ["src/config.rs"]);
    assert_eq!(
        top_files(dir.path(), "brand new thing", 1),
        ["src/new_module.rs"]
    );
    assert!(top_files(dir.path(), "Parses the configuration", 5).is_empty());
    // The blob id of an edited file is git's id of its content.
    let m = manifest::Manifest::load(&index_dir(dir.path())).unwrap();
    assert_eq!(
        m.files["src/config.rs"].blob,
        scan::blob_id(b"pub fn load_yaml_settings() {}\n")
    );
    assert!(!status(dir.path(), &opts()).unwrap().is_stale());
}

#[test]
fn switching_branches_costs_only_the_changed_blobs() {
    let mut files: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("src/m{i}.rs"),
                format!("pub fn function_{i}() -> u32 {{ {i} }}\n"),
            )
        })
        .collect();
    files.push((
        "src/feature.rs".into(),
        "pub fn old_behaviour() {}\n".into(),
    ));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (dir, repo) = fixture(&refs);
    index(dir.path());

    checkout(&repo, "topic", true);
    write(
        dir.path(),
        &[("src/feature.rs", "pub fn shiny_new_behaviour() {}\n")],
    );
    commit_all(&repo, "topic change");
    let s = index(dir.path());
    assert_eq!((s.updated, s.chunked), (1, 1));
    assert_eq!(
        top_files(dir.path(), "shiny new behaviour", 1),
        ["src/feature.rs"]
    );

    checkout(&repo, "main", false);
    let s = index(dir.path());
    assert_eq!(
        (s.updated, s.chunked),
        (1, 0),
        "the main blob is still cached"
    );
    assert_eq!(
        top_files(dir.path(), "old behaviour", 1),
        ["src/feature.rs"]
    );
    assert!(top_files(dir.path(), "shiny", 5).is_empty());
}

#[test]
fn binary_invalid_utf8_huge_empty_and_ignored_files_are_handled() {
    let (dir, _repo) = fixture(&[
        ("src/ok.rs", "pub fn fine() {}\n"),
        ("Cargo.lock", "# lock\n"),
        ("empty.rs", ""),
        (".troupeignore", "vendor/\n"),
        ("vendor/dep.rs", "pub fn vendored() {}\n"),
        (
            "gen.go",
            "// Code generated by protoc-gen-go. DO NOT EDIT.\npackage x\n",
        ),
    ]);
    std::fs::write(dir.path().join("logo.png"), b"\x89PNG\r\n\x1a\n\0\0\0IHDR").unwrap();
    std::fs::write(
        dir.path().join("latin1.c"),
        b"/* caf\xe9 */ int cafe_counter;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("big.txt"),
        "some words here\n".repeat(70_000),
    )
    .unwrap();
    let s = index(dir.path());
    assert_eq!(
        indexed_paths(dir.path()),
        [".troupeignore", "latin1.c", "src/ok.rs"]
    );
    let count = |r| s.skipped.get(&r).copied().unwrap_or(0);
    assert_eq!(count(SkipReason::Binary), 1);
    assert_eq!(count(SkipReason::TooLarge), 1);
    assert_eq!(count(SkipReason::Lockfile), 1);
    assert_eq!(count(SkipReason::Empty), 1);
    assert_eq!(count(SkipReason::Excluded), 1);
    assert_eq!(count(SkipReason::Generated), 1);
    assert_eq!(top_files(dir.path(), "cafe counter", 1), ["latin1.c"]);

    // A larger limit takes the big file in without it changing.
    let mut o = opts();
    o.scan.max_file_bytes = 4 * 1024 * 1024;
    let s = update(dir.path(), &o, &mut |_| {}).unwrap();
    assert_eq!(s.updated, 1);
    assert!(indexed_paths(dir.path()).contains(&"big.txt".to_string()));
    // `index.exclude` patterns apply like .troupeignore.
    o.scan.exclude = vec!["*.txt".into()];
    update(dir.path(), &o, &mut |_| {}).unwrap();
    assert!(!indexed_paths(dir.path()).contains(&"big.txt".to_string()));
}

#[test]
fn two_indexers_at_once_both_finish_with_one_consistent_index() {
    let files: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("src/f{i}.rs"),
                format!("pub fn item_{i}() -> u32 {{ {i} }}\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (dir, _repo) = fixture(&refs);
    let root = dir.path().to_path_buf();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || update(&root, &opts(), &mut |_| {}))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &results {
        let s = r.as_ref().unwrap();
        assert_eq!(s.files, 60);
    }
    assert_eq!(
        results
            .iter()
            .map(|r| r.as_ref().unwrap().updated)
            .sum::<u64>(),
        60,
        "the second indexer found the first one's work done"
    );
    let reader = TextReader::open(&text_dir(&index_dir(&root))).unwrap();
    assert_eq!(reader.num_chunks(), indexed_chunk_count(&root));
    assert!(!status(&root, &opts()).unwrap().is_stale());
}

fn indexed_chunk_count(root: &Path) -> u64 {
    summarize(&manifest::Manifest::load(&index_dir(root)).unwrap()).chunks
}

#[test]
fn a_held_lock_times_out_with_a_message_naming_the_fix() {
    let (dir, _repo) = fixture(&[("a.rs", "fn a() {}\n")]);
    let idir = index_dir(dir.path());
    let _held = IndexLock::acquire(&idir, Duration::from_secs(1), &mut |_| {}).unwrap();
    let mut o = opts();
    o.lock_timeout = Duration::from_millis(200);
    let mut waited = false;
    let err = update(dir.path(), &o, &mut |p| waited |= p == Progress::Waiting).unwrap_err();
    assert!(waited);
    let msg = err.to_string();
    assert!(msg.contains("another `troupe index` is updating"), "{msg}");
}

#[test]
fn a_run_killed_between_its_commit_and_its_manifest_is_recovered() {
    let (dir, _repo) = fixture(&[("src/config.rs", LIB), ("src/net.rs", NET)]);
    index(dir.path());
    let idir = index_dir(dir.path());
    let old_manifest = std::fs::read(idir.join(manifest::FILE)).unwrap();
    // A run that committed the text index (deleting net.rs) and died before its manifest.
    std::fs::remove_file(dir.path().join("src/net.rs")).unwrap();
    write(
        dir.path(),
        &[("src/extra.rs", "pub fn extra_helper() {}\n")],
    );
    index(dir.path());
    std::fs::write(idir.join(manifest::FILE), &old_manifest).unwrap();
    // Leftovers of a dying writer: a half-written manifest and a stray segment file.
    std::fs::write(idir.join("manifest.json.tmp-99999"), b"{\"vers").unwrap();
    std::fs::write(text_dir(&idir).join("deadbeef.idx"), b"garbage").unwrap();

    // Readers still open and answer from the last commit.
    assert_eq!(top_files(dir.path(), "extra helper", 1), ["src/extra.rs"]);
    let st = status(dir.path(), &opts()).unwrap();
    assert!(st.interrupted && st.is_stale());
    // The next run notices and rebuilds the text index from the cache.
    let s = index(dir.path());
    assert!(s.rebuilt);
    assert_eq!(
        s.chunked, 1,
        "only extra.rs, unknown to the old manifest, is chunked"
    );
    assert_eq!(indexed_paths(dir.path()), ["src/config.rs", "src/extra.rs"]);
    let reader = TextReader::open(&text_dir(&idir)).unwrap();
    assert_eq!(reader.num_chunks(), indexed_chunk_count(dir.path()));
    assert!(!status(dir.path(), &opts()).unwrap().is_stale());
}

#[test]
fn a_first_run_killed_before_any_commit_leaves_a_directory_the_next_run_repairs() {
    let (dir, _repo) = fixture(&[("src/config.rs", LIB)]);
    let tdir = text_dir(&index_dir(dir.path()));
    std::fs::create_dir_all(&tdir).unwrap();
    std::fs::write(tdir.join("0123.store"), b"partial").unwrap();
    assert!(matches!(
        TextReader::open(&tdir),
        Err(Error::NoIndex { .. })
    ));
    let msg = TextReader::open(&tdir).unwrap_err().to_string();
    assert!(msg.contains("troupe index"), "{msg}");
    index(dir.path());
    assert_eq!(top_files(dir.path(), "parse config", 1), ["src/config.rs"]);
}

/// A deterministic stand-in for an embedding model: hashed bag of identifier parts.
pub(crate) struct HashEmbedder {
    pub calls: usize,
    pub fail_after: Option<usize>,
}

impl Embed for HashEmbedder {
    fn model_id(&self) -> String {
        "hash-embedder".into()
    }

    fn dim(&self) -> usize {
        64
    }

    fn embed_documents(&mut self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, String> {
        self.calls += 1;
        if self.fail_after.is_some_and(|n| self.calls > n) {
            return Err("simulated crash".into());
        }
        Ok(texts.iter().map(|t| hash_vector(t)).collect())
    }

    fn embed_query(&mut self, text: &str) -> std::result::Result<Vec<f32>, String> {
        Ok(hash_vector(text))
    }
}

pub(crate) fn hash_vector(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 64];
    for t in tokenizer::terms(text) {
        let h = t.bytes().fold(1469598103934665603u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(1099511628211)
        });
        v[(h % 64) as usize] += 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / n).collect()
}

#[test]
fn embeddings_fill_in_after_the_text_index_and_resume_after_an_interruption() {
    let files: Vec<(String, String)> = (0..40)
        .map(|i| {
            (
                format!("src/f{i}.rs"),
                format!("pub fn compute_value_{i}(x: u32) -> u32 {{\n    x * {i}\n}}\n"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (dir, _repo) = fixture(&refs);
    index(dir.path());
    let root = dir.path();

    // Killed after the first batch: the appended batch stays, the rest is missing.
    let mut o = opts();
    o.embed_batch = 8;
    let mut model = HashEmbedder {
        calls: 0,
        fail_after: Some(1),
    };
    assert!(vectors::embed_missing(root, &o, &mut model, &mut |_| {}).is_err());
    let (total, missing) = vectors::missing_blobs(root, "hash-embedder", 64).unwrap();
    assert_eq!(total, 40);
    assert!(missing > 0 && missing < 40, "{missing}");

    let mut model = HashEmbedder {
        calls: 0,
        fail_after: None,
    };
    let s = vectors::embed_missing(root, &opts(), &mut model, &mut |_| {}).unwrap();
    assert_eq!(s.embedded, missing, "only the missing blobs are embedded");
    assert_eq!(s.rows, 40);
    assert!(!s.ann, "small tables are searched exactly");
    // Nothing left to do.
    let s = vectors::embed_missing(root, &opts(), &mut model, &mut |_| {}).unwrap();
    assert_eq!(s.embedded, 0);

    let store = VectorStore::open(&index_dir(root), "hash-embedder", 64, false).unwrap();
    let hits = store
        .search(
            &hash_vector("src/f7.rs pub fn compute_value_7(x: u32) -> u32 {\n    x * 7\n}\n"),
            3,
        )
        .unwrap();
    let reader = TextReader::open(&text_dir(&index_dir(root))).unwrap();
    let top = reader.chunks_of(&hits[0].blob, hits[0].chunk).unwrap();
    assert_eq!(top[0].path, "src/f7.rs");
}

/// Cosine of two unit vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// The real EmbeddingGemma through the index's embedder, with the prompts of its catalog entry.
// Skipped (with a printed reason) when the model is not in the cache.
#[test]
fn embeddinggemma_finds_code_from_its_description_and_keeps_paraphrases_close() {
    let Some((gguf, _)) = crate::models::convert::test_support::embeddinggemma() else {
        return;
    };
    let spec = crate::models::catalog::find("embeddinggemma-300m")
        .and_then(|e| e.embedding)
        .unwrap();
    let mut model = vectors::ModelEmbedder::load(&gguf, 2, &spec).unwrap();
    assert_eq!(model.dim(), 768);
    let docs = [
        "def read_config(path):\n    with open(path) as f:\n        return json.load(f)",
        "fn evict_oldest(&mut self) {\n    if let Some(k) = self.order.pop_front() {\n        self.map.remove(&k);\n    }\n}",
        "func runMigrations(db *sql.DB) error {\n\tfor _, m := range pending(db) {\n\t\tif err := m.Apply(db); err != nil {\n\t\t\treturn err\n\t\t}\n\t}\n\treturn nil\n}",
        "function debounce(fn, ms) {\n  let t;\n  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };\n}",
        "def send_email(to, subject, body):\n    msg = EmailMessage()\n    msg['To'] = to\n    msg['Subject'] = subject\n    msg.set_content(body)\n    smtp.send_message(msg)",
    ];
    let queries = [
        ("load settings from a json file", 0),
        ("remove the least recently used cache entry", 1),
        ("apply pending database schema changes", 2),
        ("delay calling a function until the input stops changing", 3),
        ("notify a user by mail", 4),
    ];
    let doc_vectors = model.embed_documents(&docs).unwrap();
    for (query, want) in queries {
        let q = model.embed_query(query).unwrap();
        let scores: Vec<f32> = doc_vectors.iter().map(|d| dot(&q, d)).collect();
        let best = (0..docs.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(best, want, "`{query}` ranked {scores:?}");
    }
    // Two phrasings of one request are close; an unrelated request is not.
    let a = model.embed_query("parse the configuration file").unwrap();
    let b = model
        .embed_query("read and decode the config file")
        .unwrap();
    let c = model.embed_query("resize an image to a thumbnail").unwrap();
    let (close, far) = (dot(&a, &b), dot(&a, &c));
    assert!(close > 0.8, "paraphrases: cosine {close}");
    assert!(close - far > 0.2, "paraphrase {close} vs unrelated {far}");
}
