-- Each agent's open leases, counted before every lease (at most MAX_OPEN_LEASES).
CREATE INDEX phone_tasks_leased_by ON dispatch.phone_tasks (leased_by, available_at)
    WHERE state = 'leased';
