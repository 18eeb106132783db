-- In a cluster, the node whose session holds a seat (set when its socket joins there): a node
-- closes only its own seats at start and stop, and the seats of a node that died are closed
-- once their clients had the resume grace to move to another node.
ALTER TABLE participants ADD COLUMN node_id TEXT;

-- What the dead-node sweep reads every heartbeat.
CREATE INDEX participants_joined_node ON participants(node_id) WHERE status = 'joined';
