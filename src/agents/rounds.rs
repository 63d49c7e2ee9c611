//! What each round of a task left, and which round the task keeps.
//!
//! Every round ends with a commit on the task branch (the snapshot of its files) and, when there
//! is a test command, a run of it by troupe. A run ranks above another when it passes and the
//! other does not; then when its summary counted tests and the other's did not (a crash, a
//! timeout, or no test found); then with fewer failing tests; then with more passing ones.
//!
//! Rounds are compared first by the repository's own tests: the run without the files the
//! testers wrote (`own_tests`; the same as `tests` while the testers have written nothing). A
//! small model's tests are often wrong, and a wrong test must not make a correct answer lose to
//! code bent to fit it. Between rounds equal on their own tests, the whole run decides, but only
//! when both rounds ran the same tester-written tests (`tests_id`): counts of different tests say
//! nothing about the code. Among equals the later round counts as the best. A round that ranks
//! below the best round so far is undone: the files go back to the best round's snapshot.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// Tests counted from a test runner's summary (errors count as failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub passed: u32,
    pub failed: u32,
}

impl TestCounts {
    /// No test passed and none failed.
    pub fn is_empty(&self) -> bool {
        self.passed == 0 && self.failed == 0
    }
}

/// One run of the test command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRun {
    /// Exit code 0 within the timeout.
    pub passed: bool,
    /// The counts, when the runner's summary was recognised (unittest, pytest, cargo test, jest,
    /// or any `N passed` / `N failed` line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<TestCounts>,
}

impl TestRun {
    /// The run that exited with `success` and printed `output`. A run whose summary counts no
    /// test at all did not pass, whatever its exit code (unittest before Python 3.12 exits 0
    /// on `Ran 0 tests`): nothing was checked, e.g. after an edit removed the tests.
    pub fn from_output(success: bool, output: &str) -> Self {
        let counts = parse_counts(output);
        Self {
            passed: success && !counts.is_some_and(|c| c.is_empty()),
            counts,
        }
    }

    /// A run that could not start or did not finish.
    pub fn broken() -> Self {
        Self {
            passed: false,
            counts: None,
        }
    }

    /// How this run ranks against `other` (greater is better).
    pub fn rank(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }

    /// Whether the runner's summary counted at least one test.
    pub fn ran_tests(&self) -> bool {
        self.counts.is_some_and(|c| !c.is_empty())
    }

    /// Whether the runner's summary was recognised and counted no test at all.
    pub fn counted_none(&self) -> bool {
        self.counts.is_some_and(|c| c.is_empty())
    }

    fn key(&self) -> (bool, bool, std::cmp::Reverse<u32>, u32) {
        // A run that counted no test checked nothing: it ranks with the runs whose summary was
        // not recognised, below any run that tested something (a change that removes the code
        // under test must not outrank one whose tests fail).
        match self.counts {
            Some(c) if self.ran_tests() => {
                (self.passed, true, std::cmp::Reverse(c.failed), c.passed)
            }
            _ => (self.passed, false, std::cmp::Reverse(0), 0),
        }
    }

    /// E.g. `the tests pass (5 passed)`, `the tests fail (2 of 7 fail)`.
    pub fn describe(&self) -> String {
        let verdict = if self.passed {
            "the tests pass"
        } else {
            "the tests fail"
        };
        match self.counts {
            Some(c) if c.is_empty() => "the test command ran no tests".into(),
            Some(c) if c.failed == 0 => format!("{verdict} ({} passed)", c.passed),
            Some(c) => format!(
                "{verdict} ({} of {} fail)",
                c.failed,
                c.passed.saturating_add(c.failed)
            ),
            None if self.passed => verdict.to_string(),
            None => format!("{verdict} (no test summary)"),
        }
    }
}

/// What one round left, kept in the task record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundResult {
    /// 1-based.
    pub round: u32,
    /// The commit holding the round's files (the snapshot the tests ran on); `None` when the
    /// round changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The test command's run on that snapshot; `None`: not run (no test command, or no change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<TestRun>,
    /// The run on the snapshot without the files the testers wrote (as at the base commit);
    /// `None` when the testers have written nothing, so `tests` is that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_tests: Option<TestRun>,
    /// Which tester-written tests `tests` ran: a digest of those files at the snapshot (empty:
    /// none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tests_id: String,
    /// Reviewer findings of severity high.
    #[serde(default)]
    pub high_findings: u32,
    /// The feedback the round produced for the writer (used again when a later round is undone).
    #[serde(default)]
    pub feedback: String,
    /// The round whose files replaced this round's, when this round was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted_to: Option<u32>,
}

impl RoundResult {
    /// The run of the repository's own tests: `own_tests`, else `tests`.
    pub fn own(&self) -> Option<&TestRun> {
        self.own_tests.as_ref().or(self.tests.as_ref())
    }

    /// How this round ranks against `other` (greater is better): by the repository's own
    /// tests, then by the whole run when both ran the same tester-written tests. `None` when
    /// either has no test run.
    pub fn rank(&self, other: &Self) -> Option<Ordering> {
        let own = self.own()?.rank(other.own()?);
        if own != Ordering::Equal || self.tests_id != other.tests_id {
            return Some(own);
        }
        Some(self.tests.as_ref()?.rank(other.tests.as_ref()?))
    }

    /// E.g. `the tests fail (1 of 3 fail); without the testers' tests, the tests pass (1
    /// passed)`.
    pub fn describe_tests(&self) -> String {
        let Some(tests) = &self.tests else {
            return "not tested".into();
        };
        match &self.own_tests {
            Some(own) if own != tests => format!(
                "{}; without the testers' tests, {}",
                tests.describe(),
                own.describe()
            ),
            _ => tests.describe(),
        }
    }
}

/// The best tested round that was not undone: the highest-ranked ([`RoundResult::rank`]), the
/// later round among equals. `None` when no round has a test run and a snapshot.
pub fn best(rounds: &[RoundResult]) -> Option<&RoundResult> {
    let mut best: Option<&RoundResult> = None;
    for r in rounds {
        if r.tests.is_none() || r.commit.is_none() || r.reverted_to.is_some() {
            continue;
        }
        let better_or_equal = best.is_none_or(|b| r.rank(b) != Some(Ordering::Less));
        if better_or_equal {
            best = Some(r);
        }
    }
    best
}

/// Counts from the summary lines of common test runners; `None` when none is recognised.
pub fn parse_counts(output: &str) -> Option<TestCounts> {
    cargo_counts(output)
        .or_else(|| unittest_counts(output))
        .or_else(|| generic_counts(output))
}

/// `test result: ok. 5 passed; 1 failed; ...`, summed over every test binary.
fn cargo_counts(output: &str) -> Option<TestCounts> {
    let mut total: Option<TestCounts> = None;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let passed = number_before(rest, " passed");
        let failed = number_before(rest, " failed");
        if let (Some(p), Some(f)) = (passed, failed) {
            let t = total.get_or_insert(TestCounts {
                passed: 0,
                failed: 0,
            });
            t.passed = t.passed.saturating_add(p);
            t.failed = t.failed.saturating_add(f);
        }
    }
    total
}

/// `Ran 4 tests in 0.01s` then `OK`, `OK (skipped=1)` or `FAILED (failures=1, errors=1)`.
fn unittest_counts(output: &str) -> Option<TestCounts> {
    let mut lines = output.lines().map(str::trim);
    let ran = lines.by_ref().find_map(|l| {
        let rest = l.strip_prefix("Ran ")?;
        let (n, tail) = rest.split_once(' ')?;
        tail.starts_with("test").then(|| n.parse::<u32>().ok())?
    })?;
    let outcome = lines.find(|l| l.starts_with("OK") || l.starts_with("FAILED"))?;
    let field = |name: &str| {
        outcome
            .split(['(', ')', ','])
            .filter_map(|p| p.trim().strip_prefix(name)?.strip_prefix('='))
            .filter_map(|n| n.trim().parse::<u32>().ok())
            .sum::<u32>()
    };
    let failed = field("failures").saturating_add(field("errors"));
    let skipped = field("skipped").saturating_add(field("expected failures"));
    Some(TestCounts {
        passed: ran.saturating_sub(failed).saturating_sub(skipped),
        failed,
    })
}

/// pytest's `1 failed, 3 passed, 1 error in 0.2s`, jest's `Tests: 1 failed, 3 passed, 4 total`:
/// the last line that counts anything.
fn generic_counts(output: &str) -> Option<TestCounts> {
    output.lines().rev().find_map(|line| {
        let passed = count_of(line, &["passed"]);
        let failed = count_of(line, &["failed", "error", "errors"]);
        (passed.is_some() || failed.is_some()).then(|| TestCounts {
            passed: passed.unwrap_or(0),
            failed: failed.unwrap_or(0),
        })
    })
}

/// The sum of `N word` for each of `words` in `line` (whole words only, so `xfailed` is not
/// `failed`).
fn count_of(line: &str, words: &[&str]) -> Option<u32> {
    let tokens: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '=')
        .filter(|t| !t.is_empty())
        .collect();
    let mut total: Option<u32> = None;
    for pair in tokens.windows(2) {
        let word = pair[1].trim_end_matches(|c: char| !c.is_alphanumeric());
        if words.contains(&word)
            && let Ok(n) = pair[0].parse::<u32>()
        {
            total = Some(total.unwrap_or(0).saturating_add(n));
        }
    }
    total
}

/// The number right before `suffix` in `text`, e.g. `5` in `ok. 5 passed;`.
fn number_before(text: &str, suffix: &str) -> Option<u32> {
    let end = text.find(suffix)?;
    let digits: String = text[..end]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().ok()
}

/// Test output made shorter and clearer for a model: paths inside the worktree `root` become
/// relative, traceback frames of files outside it (the runner's, the standard library's) are
/// dropped with their source lines, and a failure block repeated under another test's name (a
/// module that fails to import fails every test file importing it) is kept once, then the tail
/// of at most `max` bytes.
pub fn condense(output: &str, root: &std::path::Path, max: usize) -> String {
    let prefix = format!("{}/", root.display());
    let text = output.replace(&prefix, "");
    let mut kept = String::with_capacity(text.len());
    let mut skip_deeper_than: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skip_deeper_than {
            if indent > depth && !line.trim().is_empty() {
                continue;
            }
            skip_deeper_than = None;
        }
        if line.trim_start().starts_with("File \"/") {
            skip_deeper_than = Some(indent);
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    // Blocks between unittest's `=====` separators; the first line of each names the test.
    let separator = "=".repeat(70);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity(kept.len());
    // unittest's closing `-----` line and `Ran N tests` summary follow the last block.
    let summary_at = kept
        .rfind(&format!("{}\nRan ", "-".repeat(70)))
        .unwrap_or(kept.len());
    let (blocks, summary) = kept.split_at(summary_at);
    for (i, block) in blocks.split(&separator).enumerate() {
        let (header, body) = block
            .trim_start_matches('\n')
            .split_once('\n')
            .unwrap_or_default();
        // `ERROR: test_x (module.Class.test_x)`: the test's name, which the body may repeat.
        let name = header.split_whitespace().nth(1).unwrap_or_default();
        let key = if name.is_empty() {
            body.to_string()
        } else {
            body.replace(name, "")
        };
        if i > 0 && !body.trim().is_empty() && !seen.insert(key) {
            continue;
        }
        if i > 0 {
            out.push_str(&separator);
        }
        out.push_str(block);
    }
    out.push_str(summary);
    super::tools::tail(&out, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(passed: u32, failed: u32) -> Option<TestCounts> {
        Some(TestCounts { passed, failed })
    }

    #[test]
    fn summaries_of_common_runners_are_counted() {
        let unittest_ok = "..\n----------------------------------------------------------------------\nRan 2 tests in 0.000s\n\nOK\n";
        assert_eq!(parse_counts(unittest_ok), counts(2, 0));
        let unittest_failed = "F.E\n======\nFAIL: test_x\n----\nRan 3 tests in 0.001s\n\nFAILED (failures=1, errors=1)\n";
        assert_eq!(parse_counts(unittest_failed), counts(1, 2));
        let unittest_skipped = "Ran 3 tests in 0.001s\n\nOK (skipped=1)\n";
        assert_eq!(parse_counts(unittest_skipped), counts(2, 0));
        let pytest = "..F\nFAILED test_a.py::test_x - assert 1 == 2\n1 failed, 2 passed, 1 xfailed in 0.05s\n";
        assert_eq!(parse_counts(pytest), counts(2, 1));
        let pytest_error = "E   SyntaxError: invalid syntax\n1 error in 0.03s\n";
        assert_eq!(parse_counts(pytest_error), counts(0, 1));
        let cargo = "test result: ok. 3 passed; 0 failed; 0 ignored\n\ntest result: FAILED. 1 passed; 2 failed; 0 ignored\n";
        assert_eq!(parse_counts(cargo), counts(4, 2));
        let jest = "Tests:       1 failed, 3 passed, 4 total\n";
        assert_eq!(parse_counts(jest), counts(3, 1));
        assert_eq!(parse_counts("Traceback (most recent call last):\n"), None);
        assert_eq!(parse_counts(""), None);
    }

    #[test]
    fn a_passing_run_outranks_a_failing_one_and_fewer_failures_outrank_more() {
        let pass = |p| TestRun {
            passed: true,
            counts: counts(p, 0),
        };
        let fail = |p, f| TestRun {
            passed: false,
            counts: counts(p, f),
        };
        assert_eq!(pass(1).rank(&fail(9, 1)), Ordering::Greater);
        assert_eq!(fail(3, 1).rank(&fail(5, 2)), Ordering::Greater);
        assert_eq!(fail(3, 1).rank(&fail(2, 1)), Ordering::Greater);
        assert_eq!(pass(5).rank(&pass(3)), Ordering::Greater);
        assert_eq!(fail(0, 1).rank(&TestRun::broken()), Ordering::Greater);
        assert_eq!(pass(2).rank(&pass(2)), Ordering::Equal);
    }

    fn round(round: u32, tests: Option<TestRun>) -> RoundResult {
        RoundResult {
            round,
            commit: Some(format!("c{round}")),
            tests,
            own_tests: None,
            tests_id: String::new(),
            high_findings: 0,
            feedback: String::new(),
            reverted_to: None,
        }
    }

    #[test]
    fn the_best_round_is_the_best_tested_and_the_later_among_equals() {
        let pass = Some(TestRun {
            passed: true,
            counts: counts(2, 0),
        });
        let fail = Some(TestRun {
            passed: false,
            counts: counts(1, 1),
        });
        assert_eq!(best(&[]), None);
        assert_eq!(best(&[round(1, None)]), None);
        let rounds = [
            round(1, fail),
            round(2, pass),
            round(3, fail),
            round(4, None),
        ];
        assert_eq!(best(&rounds).map(|r| r.round), Some(2));
        let rounds = [round(1, pass), round(2, fail), round(3, pass)];
        assert_eq!(best(&rounds).map(|r| r.round), Some(3));
        let mut undone = round(3, pass);
        undone.reverted_to = Some(1);
        assert_eq!(
            best(&[round(1, pass), undone]).map(|r| r.round),
            Some(1),
            "an undone round is never the best"
        );
    }

    #[test]
    fn rounds_rank_by_the_repositorys_own_tests_before_the_testers_tests() {
        let run = |passed, p, f| {
            Some(TestRun {
                passed,
                counts: counts(p, f),
            })
        };
        // Round 1: correct code; the tester's wrong test fails, the repository's tests pass.
        let mut one = round(1, run(false, 1, 1));
        one.own_tests = run(true, 1, 0);
        one.tests_id = "t1".into();
        // Round 2: code bent to the wrong test; the repository's own test fails.
        let mut two = round(2, run(false, 1, 1));
        two.own_tests = run(false, 0, 1);
        two.tests_id = "t1".into();
        assert_eq!(two.rank(&one), Some(Ordering::Less));
        assert_eq!(best(&[one.clone(), two]).map(|r| r.round), Some(1));

        // Equal on the own tests and the same tester tests: the whole run decides.
        let mut three = round(3, run(true, 2, 0));
        three.own_tests = run(true, 1, 0);
        three.tests_id = "t1".into();
        assert_eq!(three.rank(&one), Some(Ordering::Greater));
        // Different tester tests: their counts are not compared; equal, the later wins.
        let mut four = round(4, run(false, 2, 3));
        four.own_tests = run(true, 1, 0);
        four.tests_id = "t2".into();
        assert_eq!(four.rank(&three), Some(Ordering::Equal));
        assert_eq!(best(&[three, four]).map(|r| r.round), Some(4));
        assert!(
            one.describe_tests()
                .contains("without the testers' tests, the tests pass"),
            "{}",
            one.describe_tests()
        );
        assert_eq!(round(5, None).rank(&one), None);
    }

    #[test]
    fn runs_describe_themselves_with_their_counts() {
        let run = TestRun::from_output(false, "Ran 5 tests in 0.1s\n\nFAILED (failures=2)\n");
        assert_eq!(run.describe(), "the tests fail (2 of 5 fail)");
        assert_eq!(
            TestRun::from_output(true, "3 passed in 0.1s").describe(),
            "the tests pass (3 passed)"
        );
        assert_eq!(
            TestRun::broken().describe(),
            "the tests fail (no test summary)"
        );
    }

    #[test]
    fn a_run_that_counts_no_tests_did_not_pass() {
        // unittest before Python 3.12 exits 0 on an empty suite (e.g. the tests were deleted).
        let empty = TestRun::from_output(true, "\nRan 0 tests in 0.000s\n\nOK\n");
        assert!(!empty.passed);
        assert_eq!(empty.describe(), "the test command ran no tests");
        let one = TestRun::from_output(true, "Ran 1 test in 0.001s\n\nOK\n");
        assert!(one.passed);
        assert_eq!(empty.rank(&one), Ordering::Less);
        // Nor does it outrank a run whose tests fail: it checked nothing.
        let failing = TestRun::from_output(false, "Ran 1 test in 0.001s\n\nFAILED (failures=1)\n");
        assert_eq!(empty.rank(&failing), Ordering::Less);
        assert!(!empty.ran_tests() && failing.ran_tests());
        // Without a recognised summary the exit code decides, as before.
        assert!(TestRun::from_output(true, "all good\n").passed);
    }

    #[test]
    fn test_output_is_condensed_to_the_worktrees_frames_and_distinct_failures() {
        let root = std::path::Path::new("/tmp/wt/task");
        let import_error = |test: &str| {
            format!(
                "======================================================================\nERROR: {test} (unittest.loader._FailedTest.{test})\n----------------------------------------------------------------------\nImportError: Failed to import test module: {test}\nTraceback (most recent call last):\n  File \"/usr/lib/python3.11/unittest/loader.py\", line 419, in _find_test_path\n    module = self._get_module_from_name(name)\n             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n  File \"/tmp/wt/task/solution.py\", line 1, in <module>\n    def below_zero(operations: List[int]) -> bool:\n                               ^^^^\nNameError: name 'List' is not defined\n\n\n"
            )
        };
        let output = format!(
            "{}{}----------------------------------------------------------------------\nRan 2 tests in 0.000s\n\nFAILED (errors=2)\n",
            import_error("test_examples"),
            import_error("test_solution")
        );
        let short = condense(&output, root, 2_000);
        assert!(!short.contains("/usr/lib"), "{short}");
        assert!(!short.contains("_get_module_from_name"), "{short}");
        assert!(!short.contains("/tmp/wt/task"), "{short}");
        assert!(
            short.contains("  File \"solution.py\", line 1, in <module>\n    def below_zero(operations: List[int]) -> bool:\n"),
            "{short}"
        );
        assert_eq!(
            short
                .matches("NameError: name 'List' is not defined")
                .count(),
            1,
            "{short}"
        );
        assert!(short.contains("ERROR: test_examples"), "{short}");
        assert!(!short.contains("ERROR: test_solution"), "{short}");
        assert!(short.ends_with("FAILED (errors=2)\n"), "{short}");
        // Counting still works on the condensed text.
        assert_eq!(parse_counts(&short), counts(0, 2));
    }
}
