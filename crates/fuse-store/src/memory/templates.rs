//! The in-memory backend's reservation moves and templates: plain functions of the locked
//! state, so each trait method is one step under the store's lock.

use super::{host_not_found, Inner};
use crate::{StoreError, TemplateRecord, VmRecord};
use fuse_types::{now, HostId, Resources, VmId, VmState};

fn template_not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: "template",
        id: name.to_owned(),
    }
}

impl Inner {
    /// [`crate::StateStore::vm_move_reservation`].
    pub(super) fn move_reservation(
        &mut self,
        id: &VmId,
        expected: u64,
        host: &HostId,
        reserved: Resources,
    ) -> Result<VmRecord, StoreError> {
        let (from, old) = {
            let rec = self.vm_mut(id, expected)?;
            (rec.host_id.clone(), rec.reserved)
        };
        let target = self
            .hosts
            .get(host.as_str())
            .map(|h| self.host_out(h))
            .ok_or_else(|| host_not_found(host))?;
        let own = match (&from, old) {
            (Some(f), Some(o)) if f == host => Some(o),
            // Its own host even without a reservation there: the state check is waived.
            (Some(f), None) if f == host => Some(Resources::default()),
            _ => None,
        };
        crate::move_fits(&target, own, reserved)?;
        let at = now();
        if let (Some(f), Some(o)) = (&from, old) {
            if let Some(h) = self.hosts.get_mut(f.as_str()) {
                h.allocated = h.allocated.minus(o);
                h.updated_at = at;
            }
        }
        if let Some(h) = self.hosts.get_mut(host.as_str()) {
            h.allocated = h.allocated.plus(reserved);
            h.updated_at = at;
        }
        let rec = self.vm_mut(id, expected)?;
        rec.host_id = Some(host.clone());
        rec.reserved = Some(reserved);
        rec.generation += 1;
        rec.updated_at = at;
        let out = rec.clone();
        self.audit(crate::move_event(id, from.as_ref(), host, reserved));
        Ok(out)
    }

    /// [`crate::StateStore::template_insert`].
    pub(super) fn template_insert(
        &mut self,
        t: TemplateRecord,
    ) -> Result<TemplateRecord, StoreError> {
        crate::template_name_check(&t.name).map_err(StoreError::Invalid)?;
        if self.templates.contains_key(&t.name) {
            return Err(StoreError::Exists {
                kind: "template",
                id: t.name,
            });
        }
        if !self.snapshots.contains_key(t.snapshot_id.as_str()) {
            return Err(StoreError::NotFound {
                kind: "snapshot",
                id: t.snapshot_id.to_string(),
            });
        }
        self.audit(crate::template_event(&t.name, "created", &t));
        self.templates.insert(t.name.clone(), t.clone());
        Ok(t)
    }

    /// [`crate::StateStore::template_update_pool`].
    pub(super) fn template_update_pool(
        &mut self,
        name: &str,
        per_host: u32,
    ) -> Result<TemplateRecord, StoreError> {
        let t = self
            .templates
            .get_mut(name)
            .ok_or_else(|| template_not_found(name))?;
        t.pool_per_host = per_host;
        t.updated_at = now();
        let out = t.clone();
        self.audit(crate::template_event(name, "pool", &out));
        Ok(out)
    }

    /// [`crate::StateStore::template_delete`].
    pub(super) fn template_delete(&mut self, name: &str) -> Result<(), StoreError> {
        let Some(t) = self.templates.get(name).cloned() else {
            return Err(template_not_found(name));
        };
        let users = self
            .vms
            .values()
            .filter(|v| {
                v.extras.template.as_deref() == Some(name)
                    && !matches!(v.state, VmState::Destroyed | VmState::Failed)
            })
            .count();
        if users > 0 {
            return Err(crate::template_in_use(name, users as u64));
        }
        self.templates.remove(name);
        self.audit(crate::template_event(name, "deleted", &t));
        Ok(())
    }
}
