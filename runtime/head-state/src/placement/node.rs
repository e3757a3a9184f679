//! Per-node and per-GPU capacity bookkeeping: what each node has, what is free, and the
//! checks that decide whether a demand fits (now, or ever).

use ember_core::ids::NodeId;
use ember_core::resources::{
    Allocation, GpuGrant, GpuShare, NodeResources, ResourceDemand, GPU_UNITS,
};

/// One GPU of a node and what of it is still free.
#[derive(Debug, Clone)]
pub(crate) struct GpuSlot {
    pub(crate) index: u32,
    pub(crate) accelerator: String,
    pub(crate) mem_total: u64,
    pub(crate) mem_free: u64,
    /// Hundredths of this GPU not granted to any lease.
    pub(crate) share_free: u32,
    /// Which of the node's accelerator types this GPU is: its position in
    /// [`NodeState::accelerators`], so that matching a demand compares numbers, not names.
    pub(crate) kind: u32,
}

impl GpuSlot {
    #[inline]
    pub(crate) fn matches(&self, accelerator: Option<&str>) -> bool {
        accelerator.is_none_or(|a| self.accelerator.eq_ignore_ascii_case(a))
    }
}

/// One custom resource of a node.
#[derive(Debug, Clone)]
pub(crate) struct CustomSlot {
    pub(crate) name: String,
    pub(crate) total: u64,
    pub(crate) free: u64,
}

/// A node's capacity and what is free, with a few cached figures that make the common
/// feasibility checks a handful of integer comparisons.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub(crate) id: NodeId,
    pub(crate) schedulable: bool,
    /// Listed among the nodes whose free capacity grew since the last pass over the queue
    /// (see `Scheduler::grown`).
    pub(crate) grown: bool,
    pub(crate) cpu_total: u64,
    pub(crate) cpu_free: u64,
    /// Sum of every GPU's units (100 per GPU).
    pub(crate) gpu_units_total: u64,
    /// Units granted to leases.
    pub(crate) gpu_units_used: u64,
    /// How many GPUs are entirely free (share 100 free).
    pub(crate) whole_free: u32,
    /// The largest free share of any one GPU.
    pub(crate) max_share_free: u32,
    /// GPUs sorted by index, each index once.
    pub(crate) gpus: Vec<GpuSlot>,
    /// The accelerator types of the GPUs, each once (ASCII case folded), in the order of the
    /// first GPU of each: [`GpuSlot::kind`] indexes it.
    pub(crate) accelerators: Vec<String>,
    /// Custom resources sorted by name, each name once.
    pub(crate) custom: Vec<CustomSlot>,
    /// How many leases this node holds.
    pub(crate) leases: usize,
    /// Labels requests may require, sorted.
    pub(crate) labels: Vec<String>,
    /// How used the node is, for choosing among nodes: see [`NodeState::compute_usage_key`].
    pub(crate) usage_key: u128,
}

impl NodeState {
    pub(crate) fn new(id: NodeId, resources: NodeResources) -> Self {
        let mut gpus: Vec<GpuSlot> = resources
            .gpus
            .into_iter()
            .map(|g| GpuSlot {
                index: g.index,
                accelerator: g.accelerator,
                mem_total: g.memory,
                mem_free: g.memory,
                share_free: GPU_UNITS,
                kind: 0,
            })
            .collect();
        gpus.sort_by_key(|g| g.index);
        gpus.dedup_by_key(|g| g.index);
        let mut accelerators: Vec<String> = Vec::new();
        for g in &mut gpus {
            g.kind = match accelerators
                .iter()
                .position(|a| a.eq_ignore_ascii_case(&g.accelerator))
            {
                Some(k) => k as u32,
                None => {
                    accelerators.push(g.accelerator.clone());
                    (accelerators.len() - 1) as u32
                }
            };
        }
        let mut custom: Vec<CustomSlot> = resources
            .custom
            .into_iter()
            .map(|(name, total)| CustomSlot {
                name,
                total,
                free: total,
            })
            .collect();
        custom.sort_by(|a, b| a.name.cmp(&b.name));
        custom.dedup_by(|later, first| {
            if later.name == first.name {
                first.total = first.total.saturating_add(later.total);
                first.free = first.total;
                true
            } else {
                false
            }
        });
        let mut node = NodeState {
            id,
            schedulable: true,
            grown: false,
            cpu_total: resources.cpu_millis,
            cpu_free: resources.cpu_millis,
            gpu_units_total: gpus.len() as u64 * u64::from(GPU_UNITS),
            gpu_units_used: 0,
            whole_free: 0,
            max_share_free: 0,
            gpus,
            accelerators,
            custom,
            leases: 0,
            labels: {
                let mut l = resources.labels;
                l.sort();
                l.dedup();
                l
            },
            usage_key: 0,
        };
        node.refresh_gpu_cache();
        node.usage_key = node.compute_usage_key();
        node
    }

    /// Whether this node carries every one of `labels`.
    pub(crate) fn has_labels(&self, labels: &[String]) -> bool {
        labels.iter().all(|l| self.labels.binary_search(l).is_ok())
    }

    /// Recomputes the cached GPU figures from the slots.
    pub(crate) fn refresh_gpu_cache(&mut self) {
        let mut whole = 0;
        let mut max = 0;
        for g in &self.gpus {
            if g.share_free == GPU_UNITS {
                whole += 1;
            }
            max = max.max(g.share_free);
        }
        self.whole_free = whole;
        self.max_share_free = max;
    }

    #[inline]
    fn custom_slot(&self, name: &str) -> Option<&CustomSlot> {
        self.custom
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.custom[i])
    }

    /// The total of a custom resource on this node (0 where the node lacks it).
    pub(crate) fn custom_total(&self, name: &str) -> u64 {
        self.custom_slot(name).map_or(0, |c| c.total)
    }

    /// Whether the demand fits in what is free now (ignores `schedulable`).
    #[inline]
    pub(crate) fn fits_now(&self, d: &ResourceDemand) -> bool {
        if !self.fits_counts(d) {
            return false;
        }
        let units = d.gpus.units();
        if units > 0 && (d.gpu_memory > 0 || d.accelerator.is_some()) {
            let Some(kind) = self.accelerator_kind(d.accelerator.as_deref()) else {
                return false;
            };
            return if units < GPU_UNITS {
                self.best_fraction(units, d.gpu_memory, kind).is_some()
            } else {
                self.whole_available(units / GPU_UNITS, d.gpu_memory, kind)
            };
        }
        true
    }

    /// Whether the demand fits what is free now as far as the CPUs, the custom resources and
    /// the cached GPU figures tell (the largest free share, how many GPUs are entirely free):
    /// all of the check but the GPUs' memory and accelerator types.
    #[inline]
    fn fits_counts(&self, d: &ResourceDemand) -> bool {
        if self.cpu_free < d.cpu_millis {
            return false;
        }
        let units = d.gpus.units();
        if units > 0 {
            if units < GPU_UNITS {
                if self.max_share_free < units {
                    return false;
                }
            } else if self.whole_free < units / GPU_UNITS {
                return false;
            }
        }
        for (name, amount) in &d.custom {
            if *amount > 0 && self.custom_slot(name).is_none_or(|c| c.free < *amount) {
                return false;
            }
        }
        true
    }

    /// Which GPUs an accelerator type allows: `Some(None)` any of them (no type asked),
    /// `Some(Some(kind))` those of that [`GpuSlot::kind`], `None` none of this node's.
    #[inline]
    fn accelerator_kind(&self, accelerator: Option<&str>) -> Option<Option<u32>> {
        match accelerator {
            None => Some(None),
            Some(a) => self
                .accelerators
                .iter()
                .position(|k| k.eq_ignore_ascii_case(a))
                .map(|k| Some(k as u32)),
        }
    }

    /// The GPU a fraction of `units` goes to: the one with the least free share that still
    /// fits, with `memory` free and of the kind allowed (lowest index among equals).
    #[inline]
    fn best_fraction(&self, units: u32, memory: u64, kind: Option<u32>) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, g) in self.gpus.iter().enumerate() {
            if g.share_free >= units
                && g.mem_free >= memory
                && kind.is_none_or(|k| g.kind == k)
                && best.is_none_or(|(_, free)| g.share_free < free)
            {
                best = Some((i, g.share_free));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Whether `wanted` GPUs are entirely free, each with `memory` free and of the kind allowed.
    #[inline]
    fn whole_available(&self, wanted: u32, memory: u64, kind: Option<u32>) -> bool {
        let mut found = 0;
        for g in &self.gpus {
            if g.share_free == GPU_UNITS && g.mem_free >= memory && kind.is_none_or(|k| g.kind == k)
            {
                found += 1;
                if found == wanted {
                    return true;
                }
            }
        }
        wanted == 0
    }

    /// Whether the demand would fit on this node if it were entirely free.
    pub(crate) fn fits_total(&self, d: &ResourceDemand) -> bool {
        if self.cpu_total < d.cpu_millis {
            return false;
        }
        for (name, amount) in &d.custom {
            if *amount > 0 && self.custom_total(name) < *amount {
                return false;
            }
        }
        let devices = d.gpus.devices();
        if devices > 0 {
            let accel = d.accelerator.as_deref();
            let count = self
                .gpus
                .iter()
                .filter(|g| g.matches(accel) && g.mem_total >= d.gpu_memory)
                .count();
            if (count as u64) < u64::from(devices) {
                return false;
            }
        }
        true
    }

    /// Takes the demand from what is free and returns what was granted, or `None` (changing
    /// nothing) when it does not fit now. A fraction goes to the GPU with the least free share
    /// that still fits (best fit, lowest index among equals); whole GPUs go to the
    /// lowest-indexed entirely free GPUs.
    pub(crate) fn allocate(&mut self, d: &ResourceDemand) -> Option<Allocation> {
        if !self.fits_counts(d) {
            return None;
        }
        let units = d.gpus.units();
        let mut grants = Vec::new();
        if units > 0 {
            let kind = self.accelerator_kind(d.accelerator.as_deref())?;
            if units < GPU_UNITS {
                let i = self.best_fraction(units, d.gpu_memory, kind)?;
                let g = &mut self.gpus[i];
                g.share_free -= units;
                g.mem_free -= d.gpu_memory;
                grants.push(GpuGrant {
                    index: g.index,
                    share: d.gpus,
                    memory: d.gpu_memory,
                });
            } else {
                let wanted = units / GPU_UNITS;
                if (d.gpu_memory > 0 || kind.is_some())
                    && !self.whole_available(wanted, d.gpu_memory, kind)
                {
                    return None;
                }
                grants.reserve_exact(wanted as usize);
                for g in &mut self.gpus {
                    if grants.len() == wanted as usize {
                        break;
                    }
                    if g.share_free == GPU_UNITS
                        && g.mem_free >= d.gpu_memory
                        && kind.is_none_or(|k| g.kind == k)
                    {
                        g.share_free = 0;
                        g.mem_free -= d.gpu_memory;
                        grants.push(GpuGrant {
                            index: g.index,
                            share: GpuShare::ONE,
                            memory: d.gpu_memory,
                        });
                    }
                }
            }
            self.gpu_units_used += u64::from(units);
            self.refresh_gpu_cache();
        }
        self.cpu_free -= d.cpu_millis;
        let mut custom = Vec::new();
        for (name, amount) in &d.custom {
            if *amount == 0 {
                continue;
            }
            if let Ok(i) = self.custom.binary_search_by(|c| c.name.as_str().cmp(name)) {
                self.custom[i].free -= *amount;
                custom.push((name.clone(), *amount));
            }
        }
        self.usage_key = self.compute_usage_key();
        self.leases += 1;
        Some(Allocation {
            cpu_millis: d.cpu_millis,
            gpus: grants,
            custom,
        })
    }

    /// Takes exactly `a` from what is free, or returns false (changing nothing) when it is not
    /// all free now, names a GPU or custom resource this node lacks, or names one GPU twice.
    pub(crate) fn claim(&mut self, a: &Allocation) -> bool {
        if a.cpu_millis > self.cpu_free {
            return false;
        }
        let mut positions = Vec::with_capacity(a.gpus.len());
        for grant in &a.gpus {
            let Ok(i) = self.gpus.binary_search_by_key(&grant.index, |g| g.index) else {
                return false;
            };
            let g = &self.gpus[i];
            let units = grant.share.units();
            if positions.contains(&i)
                || units == 0
                || units > g.share_free
                || grant.memory > g.mem_free
            {
                return false;
            }
            positions.push(i);
        }
        for (name, amount) in &a.custom {
            match self.custom.binary_search_by(|c| c.name.as_str().cmp(name)) {
                Ok(i) if *amount <= self.custom[i].free => {}
                _ => return false,
            }
        }
        self.cpu_free -= a.cpu_millis;
        for (grant, i) in a.gpus.iter().zip(positions) {
            let g = &mut self.gpus[i];
            g.share_free -= grant.share.units();
            g.mem_free -= grant.memory;
            self.gpu_units_used += u64::from(grant.share.units());
        }
        for (name, amount) in &a.custom {
            if let Ok(i) = self.custom.binary_search_by(|c| c.name.as_str().cmp(name)) {
                self.custom[i].free -= amount;
            }
        }
        if !a.gpus.is_empty() {
            self.refresh_gpu_cache();
        }
        self.usage_key = self.compute_usage_key();
        self.leases += 1;
        true
    }

    /// Gives back what an allocation on this node took.
    pub(crate) fn free(&mut self, a: &Allocation) {
        self.cpu_free = (self.cpu_free + a.cpu_millis).min(self.cpu_total);
        for grant in &a.gpus {
            if let Ok(i) = self.gpus.binary_search_by_key(&grant.index, |g| g.index) {
                let g = &mut self.gpus[i];
                g.share_free = (g.share_free + grant.share.units()).min(GPU_UNITS);
                g.mem_free = (g.mem_free + grant.memory).min(g.mem_total);
                self.gpu_units_used = self
                    .gpu_units_used
                    .saturating_sub(u64::from(grant.share.units()));
            }
        }
        for (name, amount) in &a.custom {
            if let Ok(i) = self.custom.binary_search_by(|c| c.name.as_str().cmp(name)) {
                let c = &mut self.custom[i];
                c.free = (c.free + amount).min(c.total);
            }
        }
        if !a.gpus.is_empty() {
            self.refresh_gpu_cache();
        }
        self.usage_key = self.compute_usage_key();
        self.leases = self.leases.saturating_sub(1);
    }

    /// How used the node is, as one number that orders nodes: the fraction of its GPU units
    /// in use (high 64 bits), then the fraction of its CPUs in use (low 64 bits), each in fixed
    /// point with 40 fractional bits (a resource the node lacks counts as unused). Fractions
    /// whose denominators are below 2^20 (a million milli-CPUs) never compare equal wrongly.
    pub(crate) fn compute_usage_key(&self) -> u128 {
        fn frac(used: u64, total: u64) -> u128 {
            if total == 0 {
                0
            } else if used < 1 << 24 {
                // The same quotient, by a 64-bit division rather than a 128-bit one.
                u128::from((used << 40) / total)
            } else {
                (u128::from(used) << 40) / u128::from(total)
            }
        }
        (frac(self.gpu_units_used, self.gpu_units_total) << 64)
            | frac(self.cpu_total - self.cpu_free, self.cpu_total)
    }
}
