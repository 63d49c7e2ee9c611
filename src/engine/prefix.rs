//! Prefix reuse bookkeeping: longest common token prefixes and a ledger of KV cells.
//!
//! With a unified KV cache, llama.cpp's `seq_cp` does not copy data: it tags the existing cells
//! with one more sequence id, and `seq_rm` frees a cell only when no sequence holds it any more.
//! The [`CellLedger`] mirrors that exactly (each logical cell has a reference count), so the
//! scheduler knows how many cells are really in use and how many evicting an idle sequence would
//! give back. Pure logic, no llama.cpp; owned by the scheduler on the engine thread.

use std::collections::HashMap;

/// Length of the longest common prefix of two token lists.
pub(crate) fn common_prefix_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Identifies one logical KV cell (one token of one or more sequences).
pub(crate) type CellId = u64;

/// Reference counts of the KV cells held by sequences.
#[derive(Debug, Default)]
pub(crate) struct CellLedger {
    next: CellId,
    refs: HashMap<CellId, u32>,
}

impl CellLedger {
    /// Allocates `n` new cells held by one sequence.
    pub fn alloc(&mut self, n: usize) -> Vec<CellId> {
        let cells: Vec<CellId> = (self.next..self.next + n as u64).collect();
        self.next += n as u64;
        for &c in &cells {
            self.refs.insert(c, 1);
        }
        cells
    }

    /// Another sequence now also holds `cells` (a `seq_cp`).
    pub fn share(&mut self, cells: &[CellId]) {
        for c in cells {
            *self.refs.entry(*c).or_insert(0) += 1;
        }
    }

    /// A sequence let go of `cells` (a `seq_rm`); cells nobody holds are freed.
    pub fn release(&mut self, cells: &[CellId]) {
        for c in cells {
            if let Some(n) = self.refs.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(c);
                }
            }
        }
    }

    /// How many of `cells` only this holder has (what releasing them would free).
    pub fn exclusive(&self, cells: &[CellId]) -> usize {
        cells
            .iter()
            .filter(|c| self.refs.get(c).copied() == Some(1))
            .count()
    }

    /// Cells in use.
    pub fn used(&self) -> usize {
        self.refs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_len_stops_at_first_difference() {
        assert_eq!(common_prefix_len(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix_len::<i32>(&[], &[1]), 0);
        assert_eq!(common_prefix_len(&[1, 2], &[1, 2]), 2);
    }

    #[test]
    fn shared_cells_are_freed_only_when_the_last_holder_releases_them() {
        let mut ledger = CellLedger::default();
        let a = ledger.alloc(10);
        assert_eq!(ledger.used(), 10);
        ledger.share(&a[..6]);
        let b_own = ledger.alloc(3);
        assert_eq!(ledger.used(), 13);
        assert_eq!(ledger.exclusive(&a), 4);
        ledger.release(&a);
        assert_eq!(ledger.used(), 9);
        ledger.release(&a[..6]);
        ledger.release(&b_own);
        assert_eq!(ledger.used(), 0);
    }
}
