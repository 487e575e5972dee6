//! Faults between clusters, members and nodes, as the fabric's ruleset enforces them:
//! partitions, isolation, unplugged nodes, degradation.

use super::*;

impl Lab {
    pub(super) fn pair(&self, a: &str, b: &str) -> Result<()> {
        self.cluster(a)?;
        self.cluster(b)?;
        if a == b {
            return Err(refused("name two different clusters"));
        }
        Ok(())
    }

    /// Cuts all traffic between clusters `a` and `b` at the fabric. Returns false if they
    /// were cut already.
    pub fn partition(&mut self, a: &str, b: &str) -> Result<bool> {
        self.pair(a, b)?;
        let mut faults = self.state.faults.clone();
        let changed = faults.partition(a, b);
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Restores traffic between `a` and `b` (partition and degradation). Returns false if
    /// nothing was in force.
    pub fn heal(&mut self, a: &str, b: &str) -> Result<bool> {
        self.pair(a, b)?;
        let mut faults = self.state.faults.clone();
        let changed = faults.heal(a, b);
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Cuts API-server member `t` off from its cluster's other members (clients still reach
    /// it). Returns false if it was isolated already.
    pub fn isolate(&mut self, t: &Target) -> Result<bool> {
        let Target::Member { .. } = t else {
            return Err(refused(format!(
                "{} is not an API-server member",
                t.label()
            )));
        };
        let mut faults = self.state.faults.clone();
        let changed = faults.isolate(&t.label());
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Lets member `t` reach its peers again. Returns false if it was not isolated.
    pub fn rejoin(&mut self, t: &Target) -> Result<bool> {
        let mut faults = self.state.faults.clone();
        let changed = faults.rejoin(&t.label());
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Cuts node `t` off the network at the fabric: every packet to or from its address and
    /// pod range is dropped, so to everyone else it is a dead node. Returns false if it was
    /// unplugged already.
    pub fn unplug(&mut self, t: &Target) -> Result<bool> {
        let Target::Node { .. } = t else {
            return Err(refused(format!("{} is not a node", t.label())));
        };
        let mut faults = self.state.faults.clone();
        let changed = faults.unplug(&t.label());
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Puts an unplugged node back on the network. Returns false if it was not unplugged.
    pub fn plug(&mut self, t: &Target) -> Result<bool> {
        let mut faults = self.state.faults.clone();
        let changed = faults.plug(&t.label());
        self.enforce(faults)?;
        Ok(changed)
    }

    /// Degrades the link between `a` and `b`.
    pub fn degrade(&mut self, a: &str, b: &str, d: Degrade) -> Result<()> {
        self.pair(a, b)?;
        if d.loss_pct > 100 {
            return Err(refused("--loss is a percentage, 0 to 100"));
        }
        if d.jitter_ms > d.delay_ms {
            return Err(refused("the jitter must not exceed the delay"));
        }
        let mut faults = self.state.faults.clone();
        faults.degrade(a, b, d);
        self.enforce(faults)
    }

    /// Enforces `faults` and records them; if they cannot be enforced, the faults in force
    /// before are restored and nothing is recorded.
    pub(super) fn enforce(&mut self, faults: Faults) -> Result<()> {
        let before = std::mem::replace(&mut self.state.faults, faults);
        if let Err(e) = self.apply_faults(&before.isolated) {
            let tried = std::mem::replace(&mut self.state.faults, before);
            let _ = self.apply_faults(&tried.isolated);
            return Err(e);
        }
        self.save()
    }
}
