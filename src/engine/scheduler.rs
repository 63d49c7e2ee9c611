//! Continuous-batching scheduler: which request gets which sequence, what goes into the next
//! batch, and which KV contents are reused, copied or freed.
//!
//! Every sequence has its own KV stream (llama.cpp's non-unified cache): a token attends only to
//! its own sequence's cells, so eight decoding sequences cost eight short attentions, not eight
//! attentions over everything cached. A slot holds the exact token list that is in its stream.
//! It is `Free` (nothing cached), `Idle` (a finished request's tokens kept as a prefix cache,
//! reused least recently used first) or `Active` (a running request). Admission looks for the
//! longest common prefix between a waiting request and every slot: an idle match can be taken
//! over in place (the tail beyond the prefix is removed), any other match is copied into the
//! target stream (a whole-stream copy, then the tail removed). When a running request is still
//! prefilling a prompt that shares more with the waiting one than is in its cache yet, the
//! waiting request is held until the shared part is computed, so several agents sending the same
//! context at once compute it once.
//!
//! llama.cpp splits a batch into one pass over the weights per run of consecutive sequence ids,
//! so the running sequences are kept on consecutive ids: admission prefers targets that keep
//! them contiguous, and when a request in the middle finishes, the last running one is moved
//! into the gap (one stream copy instead of a second pass on every later step). A cache entry in
//! a sequence taken for contiguity first moves to the least recently used one, so that what is
//! given up is always the oldest entry (agents that run a tool between calls find their whole
//! conversation still cached).
//!
//! Each request fits its sequence (the caller clamps prompt plus output to `ctx_per_seq`), so a
//! request waits only for a sequence, never for cells (back-pressure, not failure). Pure logic
//! over the [`KvOps`] trait: the engine thread implements it with the llama.cpp context, tests
//! with a recorder. Single-threaded (owned by the engine thread).

use llama_cpp_2::token::LlamaToken;

use super::prefix::common_prefix_len;
use super::request::{Priority, RequestId};

/// The KV cache operations the scheduler needs (positions are token indices).
pub(crate) trait KvOps {
    /// Removes positions `[p0, end)` of `seq`.
    fn seq_rm(&mut self, seq: i32, p0: usize);
    /// Replaces everything `dst` holds with a copy of everything `src` holds.
    fn seq_copy(&mut self, src: i32, dst: i32);
}

/// Scheduler limits.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    /// Requests decoded at the same time.
    pub n_parallel: usize,
    /// Sequences (KV streams) in the context, running plus cache-only; at least `n_parallel`.
    pub n_slots: usize,
    /// Maximum tokens (prompt plus generated) per sequence: the size of each stream.
    pub ctx_per_seq: usize,
    /// Tokens per step (one per decoding sequence plus prefill chunks).
    pub step_tokens: usize,
    /// Reuse cached prefixes.
    pub prefix_cache: bool,
    /// Hold a waiting request for a running prefill only if that gains at least this many tokens.
    pub prefix_wait_min: usize,
}

/// A request waiting for a sequence.
#[derive(Debug)]
pub(crate) struct Pending<R> {
    pub id: RequestId,
    pub priority: Priority,
    pub tokens: Vec<LlamaToken>,
    /// Generated-token limit, already clamped to the context per sequence.
    pub max_new: usize,
    pub payload: R,
}

/// A running request.
#[derive(Debug)]
pub(crate) struct Active<R> {
    pub id: RequestId,
    pub priority: Priority,
    arrival: u64,
    pub prompt: Vec<LlamaToken>,
    /// Prompt tokens reused from the cache.
    pub cached: usize,
    pub max_new: usize,
    /// Tokens sampled so far.
    pub generated: usize,
    /// The last sampled token, not yet in the KV cache.
    pub next_token: Option<LlamaToken>,
    pub payload: R,
}

#[derive(Debug)]
enum SlotState<R> {
    Free,
    Idle,
    Active(Box<Active<R>>),
}

#[derive(Debug)]
struct Slot<R> {
    seq: i32,
    /// The tokens in this sequence's KV, position i holding `tokens[i]`.
    tokens: Vec<LlamaToken>,
    state: SlotState<R>,
    last_used: u64,
}

/// One sequence's part of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BatchEntry {
    pub slot: usize,
    pub seq: i32,
    /// Position of the first token.
    pub pos: usize,
    pub tokens: Vec<LlamaToken>,
    /// Whether logits are needed for the last token (decode, or the end of the prompt).
    pub logits: bool,
}

/// A request that got a sequence this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub slot: usize,
    pub id: RequestId,
    pub cached: usize,
}

/// What a cancellation found.
#[derive(Debug)]
pub(crate) enum Removed<R> {
    /// The request was still waiting.
    Waiting(Pending<R>),
    /// The request was running; its sequence is free again.
    Active(Box<Active<R>>),
}

/// The scheduler state.
#[derive(Debug)]
pub(crate) struct Scheduler<R> {
    cfg: SchedulerConfig,
    slots: Vec<Slot<R>>,
    /// Waiting requests in service order: priority, then arrival.
    waiting: Vec<(u64, Pending<R>)>,
    tick: u64,
    arrivals: u64,
    /// Waiting requests held for a running prefill at the last admission.
    pub held: usize,
    /// Running requests moved to another sequence to keep the running ones contiguous.
    pub moves: u64,
    /// Cache entries moved out of a sequence about to be overwritten ([`Self::keep_entry`]).
    pub kept: u64,
}

impl<R> Scheduler<R> {
    /// A scheduler with all slots free.
    pub fn new(mut cfg: SchedulerConfig) -> Self {
        cfg.n_parallel = cfg.n_parallel.max(1);
        cfg.n_slots = cfg.n_slots.max(cfg.n_parallel);
        cfg.ctx_per_seq = cfg.ctx_per_seq.max(2);
        cfg.step_tokens = cfg.step_tokens.max(cfg.n_parallel + 1);
        let slots = (0..cfg.n_slots)
            .map(|i| Slot {
                seq: i as i32,
                tokens: Vec::new(),
                state: SlotState::Free,
                last_used: 0,
            })
            .collect();
        Self {
            cfg,
            slots,
            waiting: Vec::new(),
            tick: 0,
            arrivals: 0,
            held: 0,
            moves: 0,
            kept: 0,
        }
    }

    /// Queues a request (the caller checked that its prompt fits one sequence).
    pub fn enqueue(&mut self, pending: Pending<R>) {
        self.arrivals += 1;
        let arrival = self.arrivals;
        let at = self
            .waiting
            .iter()
            .position(|(_, w)| w.priority < pending.priority)
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, (arrival, pending));
    }

    /// Removes a request, waiting or running. A running request's tokens stay cached in its
    /// (now idle) sequence.
    pub fn remove(&mut self, id: RequestId, kv: &mut impl KvOps) -> Option<Removed<R>> {
        if let Some(at) = self.waiting.iter().position(|(_, w)| w.id == id) {
            return Some(Removed::Waiting(self.waiting.remove(at).1));
        }
        let slot = self
            .slots
            .iter()
            .position(|s| matches!(&s.state, SlotState::Active(a) if a.id == id))?;
        self.finish(slot, kv).map(Removed::Active)
    }

    /// Ends the request in `slot`; its sequence becomes idle (a prefix cache entry) or free.
    pub fn finish(&mut self, slot: usize, kv: &mut impl KvOps) -> Option<Box<Active<R>>> {
        self.tick += 1;
        let tick = self.tick;
        let keep_cache = self.cfg.prefix_cache;
        let s = self.slots.get_mut(slot)?;
        let state = std::mem::replace(&mut s.state, SlotState::Free);
        let SlotState::Active(active) = state else {
            s.state = state;
            return None;
        };
        s.last_used = tick;
        if keep_cache && !s.tokens.is_empty() {
            s.state = SlotState::Idle;
        } else {
            self.clear_slot(slot, kv);
        }
        Some(active)
    }

    /// Ends the request in `slot` and drops its KV (after a failed decode its cache content is
    /// not trusted).
    pub fn abort(&mut self, slot: usize, kv: &mut impl KvOps) -> Option<Box<Active<R>>> {
        let active = self.finish(slot, kv)?;
        self.clear_slot(slot, kv);
        Some(active)
    }

    /// Drops every idle cache entry (used when llama.cpp reports a full KV cache).
    pub fn evict_all_idle(&mut self, kv: &mut impl KvOps) -> usize {
        let idle: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i].state, SlotState::Idle))
            .collect();
        for &i in &idle {
            self.clear_slot(i, kv);
        }
        idle.len()
    }

    /// Gives waiting requests sequences, in priority order, while sequences last, then moves
    /// running requests so that they sit on consecutive sequence ids.
    pub fn admit(&mut self, kv: &mut impl KvOps) -> Vec<Admitted> {
        let mut admitted = Vec::new();
        self.held = 0;
        let mut i = 0;
        while i < self.waiting.len() {
            if self.active_count() >= self.cfg.n_parallel {
                break;
            }
            match self.try_admit(i, kv) {
                Admission::Admitted(a) => admitted.push(a),
                Admission::Held => {
                    self.held += 1;
                    i += 1;
                }
                // No sequence: later (lower priority or younger) requests must not overtake.
                Admission::NoSpace => break,
            }
        }
        self.compact(kv);
        admitted
    }

    /// The next batch: one token per decoding sequence, then prefill chunks within the budget.
    pub fn plan(&self) -> Vec<BatchEntry> {
        let mut budget = self.cfg.step_tokens;
        let mut entries = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let SlotState::Active(a) = &s.state
                && let Some(t) = a.next_token
            {
                entries.push(BatchEntry {
                    slot: i,
                    seq: s.seq,
                    pos: s.tokens.len(),
                    tokens: vec![t],
                    logits: true,
                });
                budget = budget.saturating_sub(1);
            }
        }
        let mut prefilling: Vec<(usize, &Active<R>)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.state {
                SlotState::Active(a) if s.tokens.len() < a.prompt.len() => Some((i, &**a)),
                _ => None,
            })
            .collect();
        prefilling.sort_by_key(|(_, a)| (std::cmp::Reverse(a.priority), a.arrival));
        for (i, a) in prefilling {
            if budget == 0 {
                break;
            }
            let s = &self.slots[i];
            let start = s.tokens.len();
            let n = (a.prompt.len() - start).min(budget);
            entries.push(BatchEntry {
                slot: i,
                seq: s.seq,
                pos: start,
                tokens: a.prompt[start..start + n].to_vec(),
                logits: start + n == a.prompt.len(),
            });
            budget -= n;
        }
        // Ascending sequence ids: llama.cpp takes a run of consecutive ids in one pass.
        entries.sort_by_key(|e| e.seq);
        entries
    }

    /// Records that a planned batch was decoded: its tokens are now in the KV cache.
    pub fn commit(&mut self, entries: &[BatchEntry]) {
        for e in entries {
            let s = &mut self.slots[e.slot];
            debug_assert_eq!(s.tokens.len(), e.pos);
            s.tokens.extend_from_slice(&e.tokens);
            if let SlotState::Active(a) = &mut s.state
                && a.next_token.is_some()
                && e.tokens.len() == 1
                && e.pos >= a.prompt.len()
            {
                a.next_token = None;
            }
        }
    }

    /// The running request in `slot`.
    pub fn active_mut(&mut self, slot: usize) -> Option<&mut Active<R>> {
        match &mut self.slots.get_mut(slot)?.state {
            SlotState::Active(a) => Some(a),
            _ => None,
        }
    }

    /// Ids and payloads of every running request.
    pub fn active_iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Active<R>)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match &mut s.state {
                SlotState::Active(a) => Some((i, &mut **a)),
                _ => None,
            })
    }

    /// Waiting requests, in service order.
    pub fn waiting_iter(&self) -> impl Iterator<Item = &Pending<R>> {
        self.waiting.iter().map(|(_, p)| p)
    }

    /// Takes every request out (shutdown).
    pub fn drain(&mut self, kv: &mut impl KvOps) -> (Vec<Pending<R>>, Vec<Box<Active<R>>>) {
        let waiting = self.waiting.drain(..).map(|(_, p)| p).collect();
        let mut active = Vec::new();
        for i in 0..self.slots.len() {
            if let Some(a) = self.abort(i, kv) {
                active.push(a);
            }
        }
        (waiting, active)
    }

    /// Running requests.
    pub fn active_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Active(_)))
            .count()
    }

    /// Waiting requests.
    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Idle sequences kept as prefix cache.
    pub fn idle_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Idle))
            .count()
    }

    /// KV cells in use (every sequence's tokens; a prefix copied to two sequences counts twice).
    pub fn cells_used(&self) -> usize {
        self.slots.iter().map(|s| s.tokens.len()).sum()
    }

    /// KV cells the running requests may still need.
    pub fn cells_reserved(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.state {
                SlotState::Active(a) => {
                    a.prompt.len().saturating_sub(s.tokens.len()) + a.max_new - a.generated
                }
                _ => 0,
            })
            .sum()
    }

    /// Nothing running and nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.active_count() == 0
    }

    /// The tokens cached in `slot` (tests and metrics).
    #[cfg(test)]
    pub fn slot_tokens(&self, slot: usize) -> &[LlamaToken] {
        &self.slots[slot].tokens
    }

    fn try_admit(&mut self, index: usize, kv: &mut impl KvOps) -> Admission {
        // At least one prompt token is always computed, for the logits of the first sample.
        let cap = self.waiting[index].1.tokens.len().saturating_sub(1);

        // Best source now (tokens already in KV) and best source later (a running prefill).
        let mut best: Option<(usize, usize)> = None; // (slot, len)
        let mut potential = 0usize;
        if self.cfg.prefix_cache {
            let req_tokens = &self.waiting[index].1.tokens;
            for (i, s) in self.slots.iter().enumerate() {
                if matches!(s.state, SlotState::Free) {
                    continue;
                }
                let now = common_prefix_len(req_tokens, &s.tokens).min(cap);
                let better = match best {
                    None => now > 0,
                    Some((bi, bl)) => {
                        now > bl
                            || (now == bl
                                && matches!(s.state, SlotState::Idle)
                                && !matches!(self.slots[bi].state, SlotState::Idle))
                    }
                };
                if better {
                    best = Some((i, now));
                }
                if let SlotState::Active(a) = &s.state
                    && s.tokens.len() < a.prompt.len()
                {
                    potential = potential.max(common_prefix_len(req_tokens, &a.prompt).min(cap));
                }
            }
        }
        let best_len = best.map_or(0, |(_, l)| l);
        if potential >= best_len + self.cfg.prefix_wait_min.max(1) {
            return Admission::Held;
        }

        // The target sequence, among those not running: first one that keeps the running
        // sequences contiguous, then the source itself (no copy), then a free one, then the least
        // recently used idle one.
        let source = best.map(|(i, _)| i);
        let Some(target) = (0..self.slots.len())
            .filter(|&i| !self.is_active(i))
            .min_by_key(|&i| {
                let s = &self.slots[i];
                (
                    self.runs_with(Some(i)),
                    Some(i) != source,
                    !matches!(s.state, SlotState::Free),
                    s.last_used,
                )
            })
        else {
            return Admission::NoSpace;
        };

        // Prepare the target's KV, then start the request.
        let (arrival, req) = self.waiting.remove(index);
        match source {
            Some(src) if src == target => self.truncate_slot(target, best_len, kv),
            Some(src) => {
                self.keep_entry(target, Some(src), kv);
                self.copy_slot(src, target, kv);
                self.truncate_slot(target, best_len, kv);
            }
            None => {
                self.keep_entry(target, None, kv);
                self.truncate_slot(target, 0, kv);
            }
        }
        self.tick += 1;
        let s = &mut self.slots[target];
        s.last_used = self.tick;
        s.state = SlotState::Active(Box::new(Active {
            id: req.id,
            priority: req.priority,
            arrival,
            prompt: req.tokens,
            cached: best_len,
            max_new: req.max_new,
            generated: 0,
            next_token: None,
            payload: req.payload,
        }));
        Admission::Admitted(Admitted {
            slot: target,
            id: req.id,
            cached: best_len,
        })
    }

    /// Moves running requests until they sit on consecutive sequence ids: the last one of the
    /// span goes into the first gap (its stream is copied; the old sequence keeps the same
    /// tokens as an idle cache entry).
    fn compact(&mut self, kv: &mut impl KvOps) {
        loop {
            let running: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.is_active(i))
                .collect();
            let (Some(&lo), Some(&hi)) = (running.first(), running.last()) else {
                return;
            };
            if hi - lo + 1 == running.len() {
                return;
            }
            let Some(gap) = (lo..hi).find(|&i| !self.is_active(i)) else {
                return;
            };
            self.keep_entry(gap, None, kv);
            self.copy_slot(hi, gap, kv);
            self.tick += 1;
            let tick = self.tick;
            let state = std::mem::replace(&mut self.slots[hi].state, SlotState::Idle);
            self.slots[gap].state = state;
            self.slots[gap].last_used = tick;
            self.slots[hi].last_used = tick;
            if !self.cfg.prefix_cache || self.slots[hi].tokens.is_empty() {
                self.clear_slot(hi, kv);
            }
            self.moves += 1;
        }
    }

    /// `slot` is about to be overwritten. When it holds a cache entry, the entry moves to the
    /// least valuable other sequence (a free one, else the least recently used idle one) if that
    /// one is free or older, so that the entry lost is always the least recently used one, not
    /// whichever sits next to the running sequences: an agent's conversation, cached while it runs
    /// a tool, is still there for its next call (a stream copy costs far less than computing its
    /// tokens again). `source`, about to be copied from, is left alone.
    fn keep_entry(&mut self, slot: usize, source: Option<usize>, kv: &mut impl KvOps) {
        let s = &self.slots[slot];
        if !matches!(s.state, SlotState::Idle) || s.tokens.is_empty() {
            return;
        }
        let free = |s: &Slot<R>| matches!(s.state, SlotState::Free);
        let Some(spare) = (0..self.slots.len())
            .filter(|&i| i != slot && Some(i) != source && !self.is_active(i))
            .min_by_key(|&i| (!free(&self.slots[i]), self.slots[i].last_used))
        else {
            return;
        };
        let last_used = self.slots[slot].last_used;
        if free(&self.slots[spare]) || self.slots[spare].last_used < last_used {
            self.copy_slot(slot, spare, kv);
            let s = &mut self.slots[spare];
            s.state = SlotState::Idle;
            s.last_used = last_used;
            self.kept += 1;
        }
    }

    fn is_active(&self, slot: usize) -> bool {
        matches!(self.slots[slot].state, SlotState::Active(_))
    }

    /// Runs of consecutive running sequences, counting `extra` as running.
    fn runs_with(&self, extra: Option<usize>) -> usize {
        let mut runs = 0;
        let mut previous = false;
        for i in 0..self.slots.len() {
            let running = self.is_active(i) || Some(i) == extra;
            if running && !previous {
                runs += 1;
            }
            previous = running;
        }
        runs
    }

    /// Makes `dst` hold exactly what `src` holds.
    fn copy_slot(&mut self, src: usize, dst: usize, kv: &mut impl KvOps) {
        let (src_seq, tokens) = (self.slots[src].seq, self.slots[src].tokens.clone());
        let d = &mut self.slots[dst];
        if tokens.is_empty() {
            if !d.tokens.is_empty() {
                kv.seq_rm(d.seq, 0);
            }
        } else {
            kv.seq_copy(src_seq, d.seq);
        }
        d.tokens = tokens;
    }

    fn truncate_slot(&mut self, slot: usize, keep: usize, kv: &mut impl KvOps) {
        let s = &mut self.slots[slot];
        if s.tokens.len() > keep {
            kv.seq_rm(s.seq, keep);
            s.tokens.truncate(keep);
        }
    }

    fn clear_slot(&mut self, slot: usize, kv: &mut impl KvOps) {
        self.truncate_slot(slot, 0, kv);
        let s = &mut self.slots[slot];
        if matches!(s.state, SlotState::Idle) {
            s.state = SlotState::Free;
        }
    }
}

enum Admission {
    Admitted(Admitted),
    Held,
    NoSpace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        ops: Vec<String>,
    }

    impl KvOps for Recorder {
        fn seq_rm(&mut self, seq: i32, p0: usize) {
            self.ops.push(format!("rm {seq} {p0}.."));
        }
        fn seq_copy(&mut self, src: i32, dst: i32) {
            self.ops.push(format!("cp {src}->{dst}"));
        }
    }

    fn cfg() -> SchedulerConfig {
        SchedulerConfig {
            n_parallel: 3,
            n_slots: 6,
            ctx_per_seq: 4096,
            step_tokens: 512,
            prefix_cache: true,
            prefix_wait_min: 16,
        }
    }

    fn toks(v: impl IntoIterator<Item = i32>) -> Vec<LlamaToken> {
        v.into_iter().map(LlamaToken).collect()
    }

    fn pending(id: u64, tokens: Vec<LlamaToken>, max_new: usize) -> Pending<()> {
        Pending {
            id: RequestId(id),
            priority: Priority::Normal,
            tokens,
            max_new,
            payload: (),
        }
    }

    /// Runs steps until every active request has its prompt in KV (no sampling).
    fn prefill_all(s: &mut Scheduler<()>, kv: &mut Recorder) -> usize {
        let mut computed = 0;
        loop {
            s.admit(kv);
            let plan = s.plan();
            if plan.is_empty() {
                return computed;
            }
            computed += plan.iter().map(|e| e.tokens.len()).sum::<usize>();
            s.commit(&plan);
        }
    }

    #[test]
    fn requests_sharing_a_prefix_arriving_together_compute_it_once() {
        let mut s = Scheduler::new(cfg());
        let mut kv = Recorder::default();
        let shared: Vec<i32> = (1000..2500).collect();
        for (i, suffix) in [[1, 2, 3], [4, 5, 6], [7, 8, 9]].iter().enumerate() {
            let mut t = shared.clone();
            t.extend_from_slice(suffix);
            s.enqueue(pending(i as u64, toks(t), 8));
        }
        let computed = prefill_all(&mut s, &mut kv);
        assert_eq!(computed, 1500 + 3 * 3, "ops: {:?}", kv.ops);
        assert_eq!(s.active_count(), 3);
        assert!(kv.ops.iter().filter(|o| o.starts_with("cp 0->")).count() == 2);
    }

    #[test]
    fn a_finished_request_leaves_its_prefix_for_the_next_one() {
        let mut s = Scheduler::new(cfg());
        let mut kv = Recorder::default();
        s.enqueue(pending(1, toks(0..100), 4));
        prefill_all(&mut s, &mut kv);
        let a = s.finish(0, &mut kv);
        assert!(a.is_some());
        assert_eq!(s.idle_count(), 1);
        let mut next: Vec<i32> = (0..90).collect();
        next.extend([7, 7]);
        s.enqueue(pending(2, toks(next), 4));
        let admitted = s.admit(&mut kv);
        assert_eq!(admitted[0].cached, 90);
        assert_eq!(admitted[0].slot, 0, "an idle match is taken over in place");
        assert_eq!(kv.ops.last().map(String::as_str), Some("rm 0 90.."));
        assert_eq!(s.slot_tokens(0).len(), 90);
    }

    #[test]
    fn two_followers_of_a_finished_request_both_reuse_its_prefix() {
        let mut s = Scheduler::new(cfg());
        let mut kv = Recorder::default();
        let shared: Vec<i32> = (1000..2500).collect();
        let with = |suffix: [i32; 3]| {
            let mut t = shared.clone();
            t.extend_from_slice(&suffix);
            toks(t)
        };
        s.enqueue(pending(1, with([1, 2, 3]), 4));
        assert_eq!(prefill_all(&mut s, &mut kv), 1503);
        s.finish(0, &mut kv);
        s.enqueue(pending(2, with([4, 5, 6]), 4));
        s.enqueue(pending(3, with([7, 8, 9]), 4));
        let admitted = s.admit(&mut kv);
        assert_eq!(admitted.len(), 2);
        assert!(admitted.iter().all(|a| a.cached == 1500), "{admitted:?}");
        assert_eq!(prefill_all(&mut s, &mut kv), 6);
    }

    #[test]
    fn identical_prompt_recomputes_only_its_last_token() {
        let mut s = Scheduler::new(cfg());
        let mut kv = Recorder::default();
        s.enqueue(pending(1, toks(0..50), 4));
        prefill_all(&mut s, &mut kv);
        s.enqueue(pending(2, toks(0..50), 4));
        let admitted = s.admit(&mut kv);
        assert_eq!(admitted[0].cached, 49);
        assert_eq!(kv.ops[kv.ops.len() - 2..], ["cp 0->1", "rm 1 49.."]);
        assert_eq!(s.slot_tokens(1).len(), 49);
    }

    #[test]
    fn requests_wait_for_a_sequence_and_run_when_one_frees() {
        let mut c = cfg();
        c.n_parallel = 2;
        c.n_slots = 2;
        let mut s = Scheduler::new(c);
        let mut kv = Recorder::default();
        for i in 0..3 {
            s.enqueue(pending(i, toks((0..20).map(|t| t + 100 * i as i32)), 100));
        }
        let admitted = s.admit(&mut kv);
        assert_eq!(admitted.len(), 2);
        assert_eq!(s.waiting_count(), 1);
        prefill_all(&mut s, &mut kv);
        s.finish(admitted[0].slot, &mut kv);
        assert_eq!(s.idle_count(), 1);
        // The idle cache entry gives way to the waiting request.
        let next = s.admit(&mut kv);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].slot, admitted[0].slot);
        assert_eq!(s.waiting_count(), 0);
        assert_eq!(s.slot_tokens(next[0].slot).len(), 0);
    }

    #[test]
    fn a_gap_left_by_a_finished_request_is_closed_by_moving_the_last_running_one() {
        let mut s = Scheduler::new(cfg());
        let mut kv = Recorder::default();
        for i in 0..3 {
            s.enqueue(pending(i, toks((0..20).map(|t| t + 100 * i as i32)), 8));
        }
        assert_eq!(s.admit(&mut kv).len(), 3);
        prefill_all(&mut s, &mut kv);
        let moved = s.slot_tokens(2).to_vec();
        let finished = s.slot_tokens(1).to_vec();
        s.finish(1, &mut kv);
        kv.ops.clear();
        assert!(s.admit(&mut kv).is_empty());
        // The finished request's cache entry moves to a free sequence before the gap is filled.
        assert_eq!(kv.ops, ["cp 1->3", "cp 2->1"]);
        assert_eq!(s.moves, 1);
        assert_eq!(s.slot_tokens(3), &finished[..]);
        assert_eq!(s.active_mut(1).map(|a| a.id), Some(RequestId(2)));
        assert!(s.active_mut(2).is_none());
        assert_eq!(s.slot_tokens(1), &moved[..]);
        // The old sequence stays as a cache entry with the same tokens.
        assert_eq!(s.slot_tokens(2), &moved[..]);
        assert_eq!(s.idle_count(), 2);
        for slot in [0, 1] {
            if let Some(a) = s.active_mut(slot) {
                a.next_token = Some(LlamaToken(1));
            }
        }
        let seqs: Vec<i32> = s.plan().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1], "one run of consecutive sequences");
    }

    #[test]
    fn an_idle_prefix_away_from_the_running_ones_is_copied_next_to_them() {
        let mut c = cfg();
        c.n_parallel = 2;
        c.n_slots = 4;
        let mut s = Scheduler::new(c);
        let mut kv = Recorder::default();
        let prompt = |base: i32| toks(base..base + 40);
        s.enqueue(pending(1, prompt(1000), 8));
        s.enqueue(pending(2, prompt(2000), 8));
        assert_eq!(s.admit(&mut kv).len(), 2);
        prefill_all(&mut s, &mut kv);
        s.finish(0, &mut kv);
        s.enqueue(pending(3, prompt(3000), 8));
        let third = s.admit(&mut kv);
        assert_eq!(
            third[0].slot, 2,
            "next to the running one, not over the cache"
        );
        prefill_all(&mut s, &mut kv);
        s.finish(1, &mut kv);
        // Slot 0 holds the wanted prefix but is not next to slot 2; slot 3 is free and is.
        let mut t: Vec<i32> = (1000..1030).collect();
        t.push(7);
        s.enqueue(pending(4, toks(t), 8));
        kv.ops.clear();
        let admitted = s.admit(&mut kv);
        assert_eq!(admitted[0].slot, 3);
        assert_eq!(admitted[0].cached, 30);
        assert_eq!(kv.ops, ["cp 0->3", "rm 3 30.."]);
        assert_eq!(s.slot_tokens(0).len(), 40, "the cache entry itself is kept");
    }

    #[test]
    fn a_cache_entry_next_to_the_running_ones_moves_aside_instead_of_being_lost() {
        let mut c = cfg();
        c.n_parallel = 2;
        c.n_slots = 4;
        let mut s = Scheduler::new(c);
        let mut kv = Recorder::default();
        let prompt = |base: i32, n: i32| toks(base..base + n);
        s.enqueue(pending(1, prompt(1000, 40), 8));
        s.enqueue(pending(2, prompt(2000, 40), 8));
        assert_eq!(s.admit(&mut kv).len(), 2);
        prefill_all(&mut s, &mut kv);
        // Request 2 ends (an agent running a tool); an unrelated request arrives meanwhile. The
        // sequence next to the running one holds request 2's tokens: they move to a free one.
        s.finish(1, &mut kv);
        s.enqueue(pending(3, prompt(3000, 40), 8));
        kv.ops.clear();
        let third = s.admit(&mut kv);
        assert_eq!(third[0].slot, 1, "next to the running one");
        assert_eq!(kv.ops, ["cp 1->2", "rm 1 0.."]);
        assert_eq!((s.kept, s.slot_tokens(2).len()), (1, 40));
        prefill_all(&mut s, &mut kv);
        // The agent's next call finds its whole conversation.
        s.enqueue(pending(4, prompt(2000, 50), 8));
        let next = s.admit(&mut kv);
        assert_eq!(next.len(), 0, "two running: it waits");
        s.finish(0, &mut kv);
        let next = s.admit(&mut kv);
        assert_eq!((next[0].slot, next[0].cached), (2, 40));
        assert_eq!(
            s.slot_tokens(0).len(),
            40,
            "request 1's entry is still there"
        );
    }

    #[test]
    fn higher_priority_requests_are_admitted_first() {
        let mut c = cfg();
        c.n_parallel = 1;
        let mut s = Scheduler::new(c);
        let mut kv = Recorder::default();
        s.enqueue(pending(1, toks(0..5), 4));
        let mut high = pending(2, toks(10..15), 4);
        high.priority = Priority::High;
        s.enqueue(high);
        let admitted = s.admit(&mut kv);
        assert_eq!(admitted[0].id, RequestId(2));
    }

    #[test]
    fn batch_holds_one_token_per_decoding_sequence_plus_prefill_within_budget() {
        let mut c = cfg();
        c.step_tokens = 64;
        let mut s = Scheduler::new(c);
        let mut kv = Recorder::default();
        s.enqueue(pending(1, toks(0..10), 4));
        prefill_all(&mut s, &mut kv);
        if let Some(a) = s.active_mut(0) {
            a.next_token = Some(LlamaToken(5));
        }
        s.enqueue(pending(2, toks(500..700), 4));
        s.admit(&mut kv);
        let plan = s.plan();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].tokens.len(), 1);
        assert_eq!(plan[0].pos, 10);
        assert_eq!(plan[1].tokens.len(), 63);
        assert!(!plan[1].logits);
        s.commit(&plan);
        assert_eq!(s.slot_tokens(0).len(), 11);
        assert!(s.active_mut(0).is_some_and(|a| a.next_token.is_none()));
    }

    #[test]
    fn cancelling_a_running_request_frees_its_sequence_and_reservation() {
        let mut s = Scheduler::new(cfg());
        let mut kv = Recorder::default();
        s.enqueue(pending(1, toks(0..10), 50));
        s.admit(&mut kv);
        assert_eq!(s.cells_reserved(), 60);
        let removed = s.remove(RequestId(1), &mut kv);
        assert!(matches!(removed, Some(Removed::Active(_))));
        assert_eq!(s.active_count(), 0);
        assert_eq!(s.cells_reserved(), 0);
        assert!(s.remove(RequestId(1), &mut kv).is_none());
    }
}
