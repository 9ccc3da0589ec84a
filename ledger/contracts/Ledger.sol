// SPDX-License-Identifier: MIT OR Apache-2.0
pragma solidity ^0.8.24;

/// The stake ledger of zkinfer's optimistic path (docs/ledger.md).
///
/// Nodes stake native value and register the BN254 BLS key their receipts are
/// signed with. A result names its transcript digest and the nodes accountable for
/// it; it becomes final after the challenge window unless a challenge slashes one of
/// them first. Two challenges exist:
///
/// - equivocation: two receipts signed by one node for the same hop input with
///   different outputs. The contract checks both signatures itself.
/// - committee: a fraud proof that needs re-execution cannot run here; the contract
///   takes it when at least `committeeThreshold` registered, staked auditors sign the
///   verdict (one aggregate BLS signature).
///
/// A challenge that fails its check burns the challenger's bond; a refused one
/// (unknown result, window closed, bond missing) reverts and changes nothing.
contract ZkinferLedger {
    // BN254 base field modulus.
    uint256 internal constant P = 0x30644e72e131a029b85045b68181585d97816a916871ca8d3c208c16d87cfd47;
    // 2^256 mod P, to reduce 512-bit hash outputs.
    uint256 internal constant R256 = 0x0e0a77c19a07df2f666ea36f7879462c0a78eb28f5c70b3dd35d438dc58f0d9d;
    // G2's generator, in the precompile's order (x.c1, x.c0, y.c1, y.c0).
    uint256 internal constant G2_X1 = 0x198e9393920d483a7260bfb731fb5d25f1aa493335a9e71297e485b7aef312c2;
    uint256 internal constant G2_X0 = 0x1800deef121f1e76426a00665e5c4479674322d4f75edadd46debd5cd992f6ed;
    uint256 internal constant G2_Y1 = 0x090689d0585ff075ec9e99ad690c3395bc4b313370b38ef355acdadcd122975b;
    uint256 internal constant G2_Y0 = 0x12c85ea5db8c6deb4aab71808dcb408fe3d1e7690c43d37b4ce6cc0166fa7daa;

    uint256 internal constant RECEIPT_LEN = 202;
    // A receipt up to its output digest: tag, signer, model, layers, request, position, input.
    uint256 internal constant RECEIPT_SLOT_LEN = 170;
    uint256 public constant MAX_NODES = 64;

    uint64 public immutable challengeWindow;
    uint256 public immutable slashAmount;
    uint256 public immutable challengeBond;
    uint256 public immutable minStake;
    uint32 public immutable committeeThreshold;

    enum State {
        None,
        Pending,
        Final,
        Slashed
    }

    struct Result {
        address[] nodes;
        uint64 submittedAt;
        uint64 deadline;
        State state;
        address slashedNode;
        address challenger;
        uint64 settledAt;
    }

    struct Node {
        bytes pubkey; // compressed, as signed messages hold it (64 bytes)
        uint256[4] g2; // the same point uncompressed, in the precompile's order
    }

    mapping(address => uint256) public balanceOf;
    uint256 public burned;
    address[] internal accounts;
    mapping(address => bool) internal known;
    mapping(address => Node) internal nodes;
    mapping(bytes32 => address) public nodeOfKey;
    mapping(bytes32 => Result) internal results;
    bytes32[] internal resultIds;
    mapping(address => bytes32[]) internal locks;
    mapping(bytes32 => bool) public equivocationSlashed;

    event Deposited(address indexed account, uint256 amount, uint256 balance);
    event Withdrawn(address indexed account, uint256 amount, uint256 balance);
    event Registered(address indexed node, bytes pubkey);
    event Submitted(bytes32 indexed id, address[] nodes, uint64 deadline);
    event Finalized(bytes32 indexed id, uint64 deadline);
    event Slashed(bytes32 indexed id, address indexed node, address challenger, uint256 slashed, uint256 reward);
    event ChallengeRejected(bytes32 indexed id, address indexed challenger, string reason, uint256 bondBurned);

    error BadParams(string reason);
    error ZeroAmount();
    error InsufficientBalance(uint256 balance, uint256 amount);
    error Locked(uint64 until);
    error TransferFailed();
    error AlreadyRegistered();
    error KeyTaken(address node);
    error BadKey(string reason);
    error BadResult(string reason);
    error UnknownResult(bytes32 id);
    error NotPending(bytes32 id, State state);
    error StillOpen(bytes32 id, uint64 deadline);
    error NoBond(uint256 balance, uint256 bond);
    error NotRegistered(address node);
    error AlreadySlashed();

    constructor(uint64 window, uint256 slashBy, uint256 bond, uint256 stake, uint32 threshold) {
        if (window == 0 || window > 10 * 365 days) revert BadParams("challenge window must be 1 s to 10 years");
        if (threshold == 0 || threshold > MAX_NODES) revert BadParams("committee threshold must be 1 to 64");
        if (stake == 0) revert BadParams("min stake must be positive");
        challengeWindow = window;
        slashAmount = slashBy;
        challengeBond = bond;
        minStake = stake;
        committeeThreshold = threshold;
    }

    // ---- stake ----

    function deposit() external payable {
        if (msg.value == 0) revert ZeroAmount();
        if (!known[msg.sender]) {
            known[msg.sender] = true;
            accounts.push(msg.sender);
        }
        uint256 balance = balanceOf[msg.sender] + msg.value;
        balanceOf[msg.sender] = balance;
        emit Deposited(msg.sender, msg.value, balance);
    }

    function withdraw(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint64 until = lockedUntil(msg.sender);
        if (until != 0) revert Locked(until);
        delete locks[msg.sender];
        uint256 balance = balanceOf[msg.sender];
        if (balance < amount) revert InsufficientBalance(balance, amount);
        balanceOf[msg.sender] = balance - amount;
        emit Withdrawn(msg.sender, amount, balance - amount);
        (bool sent,) = msg.sender.call{value: amount}("");
        if (!sent) revert TransferFailed();
    }

    /// The latest deadline of a pending result naming `account`, 0 when none locks it.
    function lockedUntil(address account) public view returns (uint64 until) {
        bytes32[] storage ids = locks[account];
        for (uint256 i = 0; i < ids.length; i++) {
            Result storage r = results[ids[i]];
            if (r.state == State.Pending && block.timestamp < r.deadline && r.deadline > until) {
                until = r.deadline;
            }
        }
    }

    // ---- nodes ----

    /// Binds the sender to a BLS public key. `pop` is the key's signature on
    /// "zkinfer.pop.v1" || pubkey || sender: the key's holder agreed to this address.
    function register(bytes calldata pubkey, uint256[4] calldata g2, uint256[2] calldata pop) external {
        if (nodes[msg.sender].pubkey.length != 0) revert AlreadyRegistered();
        if (pubkey.length != 64) revert BadKey("a public key is 64 bytes compressed");
        bytes32 keyHash = keccak256(pubkey);
        if (nodeOfKey[keyHash] != address(0)) revert KeyTaken(nodeOfKey[keyHash]);
        if (!compressesTo(g2, pubkey)) revert BadKey("the point does not compress to the public key");
        bytes memory message = abi.encodePacked("zkinfer.pop.v1", pubkey, msg.sender);
        uint256[2] memory h = hashToG1(message);
        if (!pairs2(pop, h, g2)) revert BadKey("the proof of possession does not verify");
        nodes[msg.sender] = Node(pubkey, g2);
        nodeOfKey[keyHash] = msg.sender;
        emit Registered(msg.sender, pubkey);
    }

    function publicKeyOf(address node) external view returns (bytes memory) {
        return nodes[node].pubkey;
    }

    // ---- results ----

    function submit(bytes32 id, address[] calldata accountable) external {
        if (id == bytes32(0)) revert BadResult("the result id is zero");
        if (results[id].state != State.None) revert BadResult("this result id was submitted before");
        if (accountable.length == 0 || accountable.length > MAX_NODES) revert BadResult("a result names 1 to 64 nodes");
        for (uint256 i = 0; i < accountable.length; i++) {
            address node = accountable[i];
            if (nodes[node].pubkey.length == 0) revert NotRegistered(node);
            if (balanceOf[node] < minStake) revert InsufficientBalance(balanceOf[node], minStake);
            for (uint256 j = 0; j < i; j++) {
                if (accountable[j] == node) revert BadResult("a node is named twice");
            }
        }
        uint64 deadline = uint64(block.timestamp) + challengeWindow;
        Result storage r = results[id];
        r.nodes = accountable;
        r.submittedAt = uint64(block.timestamp);
        r.deadline = deadline;
        r.state = State.Pending;
        resultIds.push(id);
        for (uint256 i = 0; i < accountable.length; i++) {
            locks[accountable[i]].push(id);
        }
        emit Submitted(id, accountable, deadline);
    }

    /// Records that a result's window has closed. Its state reads final either way.
    function finalize(bytes32 id) external {
        Result storage r = results[id];
        if (r.state == State.None) revert UnknownResult(id);
        if (r.state != State.Pending) revert NotPending(id, r.state);
        if (block.timestamp < r.deadline) revert StillOpen(id, r.deadline);
        r.state = State.Final;
        r.settledAt = r.deadline;
        emit Finalized(id, r.deadline);
    }

    /// A result's state as of now: a pending result past its deadline reads final.
    function resultOf(bytes32 id)
        public
        view
        returns (State state, address[] memory accountable, uint64 submittedAt, uint64 deadline, address slashedNode, address challenger, uint64 settledAt)
    {
        Result storage r = results[id];
        state = r.state;
        settledAt = r.settledAt;
        if (state == State.Pending && block.timestamp >= r.deadline) {
            state = State.Final;
            settledAt = r.deadline;
        }
        return (state, r.nodes, r.submittedAt, r.deadline, r.slashedNode, r.challenger, settledAt);
    }

    function resultCount() external view returns (uint256) {
        return resultIds.length;
    }

    function resultIdAt(uint256 i) external view returns (bytes32) {
        return resultIds[i];
    }

    function accountCount() external view returns (uint256) {
        return accounts.length;
    }

    function accountAt(uint256 i) external view returns (address) {
        return accounts[i];
    }

    // ---- challenges ----

    /// Slashes `node` for two receipts it signed for one hop input with different
    /// outputs (the receipt message of docs/receipts: 202 bytes, `sigA`/`sigB`
    /// uncompressed G1 points). Any flaw in the evidence burns the challenger's bond.
    function challengeEquivocation(address node, bytes calldata a, uint256[2] calldata sigA, bytes calldata b, uint256[2] calldata sigB)
        external
    {
        requireBond();
        Node storage n = nodes[node];
        if (n.pubkey.length == 0) revert NotRegistered(node);
        bytes32 slot = a.length >= RECEIPT_SLOT_LEN ? keccak256(a[:RECEIPT_SLOT_LEN]) : bytes32(0);
        if (equivocationSlashed[slot]) revert AlreadySlashed();
        string memory flaw = equivocationFlaw(n, a, sigA, b, sigB);
        if (bytes(flaw).length != 0) {
            rejectChallenge(bytes32(0), flaw);
            return;
        }
        equivocationSlashed[slot] = true;
        slash(bytes32(0), node);
    }

    /// Slashes `accused`, a node of pending result `id`, on the verdict of at least
    /// `committeeThreshold` auditors (strictly increasing addresses; each registered,
    /// holding `minStake`, not the accused). Each signed "zkinfer.verdict.v1" ||
    /// its public key || this contract || id || the accused's public key; `signature`
    /// is the sum. Any flaw burns the challenger's bond.
    function challengeByCommittee(bytes32 id, address accused, address[] calldata auditors, uint256[2] calldata signature)
        external
    {
        Result storage r = results[id];
        if (r.state == State.None) revert UnknownResult(id);
        if (r.state != State.Pending || block.timestamp >= r.deadline) {
            revert NotPending(id, r.state == State.Pending ? State.Final : r.state);
        }
        requireBond();
        string memory flaw = committeeFlaw(r, id, accused, auditors, signature);
        if (bytes(flaw).length != 0) {
            rejectChallenge(id, flaw);
            return;
        }
        r.state = State.Slashed;
        r.slashedNode = accused;
        r.challenger = msg.sender;
        r.settledAt = uint64(block.timestamp);
        slash(id, accused);
    }

    function requireBond() internal view {
        if (balanceOf[msg.sender] < challengeBond) revert NoBond(balanceOf[msg.sender], challengeBond);
    }

    function rejectChallenge(bytes32 id, string memory reason) internal {
        balanceOf[msg.sender] -= challengeBond;
        burned += challengeBond;
        emit ChallengeRejected(id, msg.sender, reason, challengeBond);
    }

    function slash(bytes32 id, address node) internal {
        uint256 slashed = balanceOf[node] < slashAmount ? balanceOf[node] : slashAmount;
        uint256 reward = slashed / 2;
        balanceOf[node] -= slashed;
        balanceOf[msg.sender] += reward;
        burned += slashed - reward;
        emit Slashed(id, node, msg.sender, slashed, reward);
    }

    function equivocationFlaw(Node storage n, bytes calldata a, uint256[2] calldata sigA, bytes calldata b, uint256[2] calldata sigB)
        internal
        view
        returns (string memory)
    {
        if (a.length != RECEIPT_LEN || b.length != RECEIPT_LEN) return "a receipt message is 202 bytes";
        if (bytes18(a[:18]) != bytes18("zkinfer.receipt.v1") || bytes18(b[:18]) != bytes18("zkinfer.receipt.v1")) {
            return "not a hop receipt";
        }
        if (keccak256(a[18:82]) != keccak256(n.pubkey) || keccak256(b[18:82]) != keccak256(n.pubkey)) {
            return "a receipt names another signer";
        }
        if (keccak256(a[:RECEIPT_SLOT_LEN]) != keccak256(b[:RECEIPT_SLOT_LEN])) {
            return "the receipts are for different hops";
        }
        if (bytes32(a[RECEIPT_SLOT_LEN:]) == bytes32(b[RECEIPT_SLOT_LEN:])) return "the outputs are equal";
        if (!pairs2(sigA, hashToG1(a), n.g2)) return "the first signature does not verify";
        if (!pairs2(sigB, hashToG1(b), n.g2)) return "the second signature does not verify";
        return "";
    }

    function committeeFlaw(Result storage r, bytes32 id, address accused, address[] calldata auditors, uint256[2] calldata signature)
        internal
        view
        returns (string memory)
    {
        bool named = false;
        for (uint256 i = 0; i < r.nodes.length; i++) {
            if (r.nodes[i] == accused) named = true;
        }
        if (!named) return "the accused is not a node of the result";
        if (auditors.length < committeeThreshold) return "fewer auditors than the threshold";
        if (auditors.length > MAX_NODES) return "more than 64 auditors";
        bytes memory accusedKey = nodes[accused].pubkey;
        // Pairs: (-signature, G2) and (H(m_i), X_i) per auditor.
        uint256[] memory input = new uint256[](6 * (auditors.length + 1));
        input[0] = signature[0];
        input[1] = signature[1] == 0 ? 0 : P - (signature[1] % P);
        (input[2], input[3], input[4], input[5]) = (G2_X1, G2_X0, G2_Y1, G2_Y0);
        for (uint256 i = 0; i < auditors.length; i++) {
            address auditor = auditors[i];
            if (i > 0 && auditors[i - 1] >= auditor) return "auditors are not in increasing order";
            if (auditor == accused) return "the accused cannot audit itself";
            Node storage n = nodes[auditor];
            if (n.pubkey.length == 0) return "an auditor is not registered";
            if (balanceOf[auditor] < minStake) return "an auditor holds less than the min stake";
            uint256[2] memory h = hashToG1(abi.encodePacked("zkinfer.verdict.v1", n.pubkey, address(this), id, accusedKey));
            uint256 o = 6 * (i + 1);
            (input[o], input[o + 1]) = (h[0], h[1]);
            (input[o + 2], input[o + 3], input[o + 4], input[o + 5]) = (n.g2[0], n.g2[1], n.g2[2], n.g2[3]);
        }
        if (!pairing(input)) return "the committee's signature does not verify";
        return "";
    }

    // ---- BLS on BN254 (verifier::receipt) ----

    /// Try-and-increment: for c = 0, 1, ..: x = (keccak(dst || c || 0 || m) ||
    /// keccak(dst || c || 1 || m)) as a 512-bit big-endian integer mod P, c a
    /// little-endian u32; the first x with x^3 + 3 a square gives (x, y), y even.
    function hashToG1(bytes memory message) internal view returns (uint256[2] memory point) {
        for (uint32 c = 0; ; c++) {
            bytes4 counter = bytes4(uint32((c & 0xff) << 24 | (c >> 8 & 0xff) << 16 | (c >> 16 & 0xff) << 8 | c >> 24));
            uint256 hi = uint256(keccak256(abi.encodePacked("zkinfer.bls.h2c.v2", counter, uint8(0), message)));
            uint256 lo = uint256(keccak256(abi.encodePacked("zkinfer.bls.h2c.v2", counter, uint8(1), message)));
            uint256 x = addmod(mulmod(hi, R256, P), lo % P, P);
            uint256 rhs = addmod(mulmod(mulmod(x, x, P), x, P), 3, P);
            uint256 y = modexp(rhs, (P + 1) / 4);
            if (mulmod(y, y, P) != rhs) continue;
            if (y & 1 == 1) y = P - y;
            return [x, y];
        }
    }

    /// e(sig, G2) == e(h, key), as e(-sig, G2) * e(h, key) == 1.
    function pairs2(uint256[2] memory sig, uint256[2] memory h, uint256[4] memory key) internal view returns (bool) {
        uint256[] memory input = new uint256[](12);
        input[0] = sig[0];
        input[1] = sig[1] == 0 ? 0 : P - (sig[1] % P);
        (input[2], input[3], input[4], input[5]) = (G2_X1, G2_X0, G2_Y1, G2_Y0);
        (input[6], input[7]) = (h[0], h[1]);
        (input[8], input[9], input[10], input[11]) = (key[0], key[1], key[2], key[3]);
        return pairing(input);
    }

    /// The pairing precompile; a malformed point (off the curve, outside the group,
    /// not reduced) is a failed check, not a revert.
    function pairing(uint256[] memory input) internal view returns (bool) {
        uint256[1] memory out;
        bool ok;
        uint256 len = input.length * 32;
        assembly {
            ok := staticcall(gas(), 0x08, add(input, 0x20), len, out, 0x20)
        }
        return ok && out[0] == 1;
    }

    function modexp(uint256 base, uint256 exponent) internal view returns (uint256 result) {
        bytes memory input = abi.encode(uint256(32), uint256(32), uint256(32), base, exponent, P);
        uint256[1] memory out;
        bool ok;
        assembly {
            ok := staticcall(gas(), 0x05, add(input, 0x20), 192, out, 0x20)
        }
        require(ok, "modexp failed");
        return out[0];
    }

    /// Whether `g2` (x.c1, x.c0, y.c1, y.c0) compresses to `pubkey` as arkworks
    /// writes it: x.c0 then x.c1, little-endian, bit 7 of the last byte set when
    /// y > -y (compared c1 first, then c0), bit 6 (infinity) clear.
    function compressesTo(uint256[4] calldata g2, bytes calldata pubkey) internal pure returns (bool) {
        for (uint256 i = 0; i < 4; i++) {
            if (g2[i] >= P) return false;
        }
        uint256 c0 = littleEndian(pubkey[0:32]);
        uint256 c1 = littleEndian(pubkey[32:64]);
        uint256 flags = c1 >> 254;
        c1 &= (uint256(1) << 254) - 1;
        if (c0 != g2[1] || c1 != g2[0] || flags & 1 != 0) return false;
        uint256 negY1 = g2[2] == 0 ? 0 : P - g2[2];
        uint256 negY0 = g2[3] == 0 ? 0 : P - g2[3];
        bool greater = g2[2] != negY1 ? g2[2] > negY1 : g2[3] > negY0;
        return (flags >> 1 == 1) == greater;
    }

    function littleEndian(bytes calldata b) internal pure returns (uint256 v) {
        for (uint256 i = 0; i < 32; i++) {
            v |= uint256(uint8(b[i])) << (8 * i);
        }
    }
}
