// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

interface IVotingToken {
    function balanceOf(address account) external view returns (uint256);
}

/// @title AssetDAO (devnet)
/// @notice A small stand-in for the production AssetDAO with the same ABI for everything the voting
///         service uses: proposals, votes, their events and custom errors. Asset management, fees,
///         roles and timelocks of production are left out.
/// @dev Production behaviour that this contract keeps on purpose:
///      - proposal ids start at 1; `getProposal(0)` reverts `ProposalNotFound()`;
///      - `createProposal` sets status Active, and the status stays Active after `votingEnds`;
///      - `vote` checks, in order: not paused, proposal exists, `block.timestamp <= votingEnds`, status Active;
///      - vote weight is the voter's DLOOP balance at vote time (zero is allowed and still counts as cast);
///      - a voter may vote again only `minVotingBuffer` after its last vote on that proposal; the new vote
///        moves the voter's weight (old weight removed, new weight added) and `hasVoted` stays true;
///      - `priceOracle()` names the price oracle (zero until the owner sets one with `updatePriceOracle`,
///        which emits production's `PriceOracleUpdated`): the devnet deploys `DevPriceOracle` for it.
///      The two events that differ between the AssetDAO versions in the wild (ProposalCreated, VoteCast) are
///      emitted by the concrete contracts below, one per version, so each deployed bytecode holds only its own
///      event topics, as a real deployment does: `AssetDAO` (production, the verified Sepolia ABI),
///      `AssetDAOUpstream` (the published upstream source) and `AssetDAOUnknownEvents` (neither).
abstract contract AssetDAOCore {
    enum ProposalType {
        Investment,
        Divestment,
        ParameterChange,
        Other
    }

    enum ProposalStatus {
        Pending,
        Active,
        Rejected,
        Approved,
        Executed,
        Canceled
    }

    struct Proposal {
        uint256 id;
        ProposalType proposalType;
        address assetAddress;
        uint256 amount;
        string description;
        address proposer;
        uint256 createdAt;
        uint256 votingEnds;
        uint256 yesVotes;
        uint256 noVotes;
        ProposalStatus status;
        bool executed;
    }

    /// @dev One voter's standing vote on one proposal, needed to move its weight on a re-vote.
    struct Ballot {
        bool cast;
        bool support;
        uint256 weight;
        uint256 castAt;
    }

    // Immutables rather than constants: their getters are `view`, like production's.
    /// @notice Minimum time between two votes of the same voter on the same proposal.
    uint256 public immutable minVotingBuffer = 6 hours;
    /// @notice Quorum in percent of votes cast (production's default; informational on the devnet).
    uint256 public immutable quorum = 10;
    address public immutable dloopToken;
    uint256 public immutable votingPeriod;

    address public owner;
    bool public paused;
    uint256 public proposalCounter;
    /// @notice The oracle whose `getAssetPrice(asset)` values proposals; the zero address when none is set.
    address public priceOracle;

    mapping(uint256 proposalId => Proposal) private _proposals;
    mapping(uint256 proposalId => mapping(address voter => Ballot)) private _ballots;

    event ProposalCanceled(uint256 indexed proposalId);
    event PriceOracleUpdated(address indexed oldPriceOracle, address indexed newPriceOracle);
    event ProposalExecuted(uint256 indexed proposalId);

    error ProposalNotFound();
    error VotingPeriodEnded();
    error InvalidProposalState();
    error VotingBufferNotElapsed();
    error ContractPaused();
    error NotAuthorized();
    error InvalidAmount();
    error ZeroAddress();

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotAuthorized();
        _;
    }

    modifier whenNotPaused() {
        if (paused) revert ContractPaused();
        _;
    }

    constructor(address dloopToken_, uint256 votingPeriodSeconds) {
        if (dloopToken_ == address(0)) revert ZeroAddress();
        if (votingPeriodSeconds == 0) revert InvalidAmount();
        dloopToken = dloopToken_;
        votingPeriod = votingPeriodSeconds;
        owner = msg.sender;
    }

    /// @notice Open a proposal for voting until `block.timestamp + votingPeriod`.
    /// @dev Investments and divestments need an asset (`ZeroAddress()`) and a non-zero amount
    ///      (`InvalidAmount()`), as in production. `assetId` in the event is derived from the asset address.
    function createProposal(
        ProposalType proposalType,
        address assetAddress,
        uint256 amount,
        string calldata description
    ) external whenNotPaused returns (uint256) {
        if (proposalType == ProposalType.Investment || proposalType == ProposalType.Divestment) {
            if (assetAddress == address(0)) revert ZeroAddress();
            if (amount == 0) revert InvalidAmount();
        }
        uint256 proposalId = ++proposalCounter;
        Proposal storage proposal = _proposals[proposalId];
        proposal.id = proposalId;
        proposal.proposalType = proposalType;
        proposal.assetAddress = assetAddress;
        proposal.amount = amount;
        proposal.description = description;
        proposal.proposer = msg.sender;
        proposal.createdAt = block.timestamp;
        proposal.votingEnds = block.timestamp + votingPeriod;
        proposal.status = ProposalStatus.Active;
        _emitProposalCreated(proposalId, assetAddress, proposalType, description);
        return proposalId;
    }

    /// @notice Vote for (`support`) or against a proposal with the caller's DLOOP balance as weight.
    function vote(uint256 proposalId, bool support) external whenNotPaused {
        Proposal storage proposal = _existing(proposalId);
        if (block.timestamp > proposal.votingEnds) revert VotingPeriodEnded();
        if (proposal.status != ProposalStatus.Active) revert InvalidProposalState();

        Ballot storage ballot = _ballots[proposalId][msg.sender];
        if (ballot.cast) {
            if (block.timestamp < ballot.castAt + minVotingBuffer) revert VotingBufferNotElapsed();
            if (ballot.support) proposal.yesVotes -= ballot.weight;
            else proposal.noVotes -= ballot.weight;
        }

        uint256 weight = IVotingToken(dloopToken).balanceOf(msg.sender);
        if (support) proposal.yesVotes += weight;
        else proposal.noVotes += weight;
        _ballots[proposalId][msg.sender] = Ballot({cast: true, support: support, weight: weight, castAt: block.timestamp});
        _emitVoteCast(proposalId, support, weight);
    }

    /// @notice Cancel an Active proposal. Only its proposer or the owner may; allowed while paused.
    function cancelProposal(uint256 proposalId) external {
        Proposal storage proposal = _existing(proposalId);
        if (msg.sender != proposal.proposer && msg.sender != owner) revert NotAuthorized();
        if (proposal.status != ProposalStatus.Active) revert InvalidProposalState();
        proposal.status = ProposalStatus.Canceled;
        emit ProposalCanceled(proposalId);
    }

    /// @notice Mark a proposal Executed. Owner only; the proposal must be Active, its voting period over
    ///         and yes votes must outweigh no votes, else `InvalidProposalState()`. Moves no funds.
    function executeProposal(uint256 proposalId) external onlyOwner whenNotPaused {
        Proposal storage proposal = _existing(proposalId);
        if (
            proposal.status != ProposalStatus.Active || block.timestamp <= proposal.votingEnds
                || proposal.yesVotes <= proposal.noVotes
        ) revert InvalidProposalState();
        proposal.status = ProposalStatus.Executed;
        proposal.executed = true;
        emit ProposalExecuted(proposalId);
    }

    /// @notice Name the price oracle (production's function and event). Owner only; zero unsets it.
    function updatePriceOracle(address newPriceOracle) external onlyOwner {
        emit PriceOracleUpdated(priceOracle, newPriceOracle);
        priceOracle = newPriceOracle;
    }

    function pause() external onlyOwner {
        paused = true;
    }

    function unpause() external onlyOwner {
        paused = false;
    }

    function getProposalCount() external view returns (uint256) {
        return proposalCounter;
    }

    function hasVoted(uint256 proposalId, address voter) external view returns (bool) {
        return _ballots[proposalId][voter].cast;
    }

    /// @notice The proposal as the 12-value tuple of production, in the same order.
    function getProposal(uint256 proposalId)
        external
        view
        returns (
            uint256 id,
            ProposalType proposalType,
            address assetAddress,
            uint256 amount,
            string memory description,
            address proposer,
            uint256 createdAt,
            uint256 votingEnds,
            uint256 yesVotes,
            uint256 noVotes,
            ProposalStatus status,
            bool executed
        )
    {
        Proposal storage p = _existing(proposalId);
        return (
            p.id,
            p.proposalType,
            p.assetAddress,
            p.amount,
            p.description,
            p.proposer,
            p.createdAt,
            p.votingEnds,
            p.yesVotes,
            p.noVotes,
            p.status,
            p.executed
        );
    }

    function _existing(uint256 proposalId) private view returns (Proposal storage proposal) {
        proposal = _proposals[proposalId];
        if (proposal.id == 0) revert ProposalNotFound();
    }

    function _emitProposalCreated(
        uint256 proposalId,
        address assetAddress,
        ProposalType proposalType,
        string calldata description
    ) internal virtual;

    function _emitVoteCast(uint256 proposalId, bool support, uint256 weight) internal virtual;
}

/// @notice The production events (verified Sepolia ABI): `assetId` is derived from the asset address.
contract AssetDAO is AssetDAOCore {
    event ProposalCreated(
        uint256 indexed proposalId, uint256 indexed assetId, address indexed proposer, ProposalType proposalType
    );
    event VoteCast(uint256 indexed proposalId, address indexed voter, bool support, uint256 weight);

    constructor(address dloopToken_, uint256 votingPeriodSeconds) AssetDAOCore(dloopToken_, votingPeriodSeconds) {}

    function _emitProposalCreated(uint256 proposalId, address assetAddress, ProposalType proposalType, string calldata)
        internal
        override
    {
        emit ProposalCreated(proposalId, uint256(uint160(assetAddress)), msg.sender, proposalType);
    }

    function _emitVoteCast(uint256 proposalId, bool support, uint256 weight) internal override {
        emit VoteCast(proposalId, msg.sender, support, weight);
    }
}

/// @notice The events of the upstream source (janteras/d-loop, contracts/core/AssetDAO.sol): the description
///         in ProposalCreated, no weight in VoteCast.
contract AssetDAOUpstream is AssetDAOCore {
    event ProposalCreated(uint256 indexed proposalId, address indexed proposer, string description);
    event VoteCast(uint256 indexed proposalId, address indexed voter, bool support);

    constructor(address dloopToken_, uint256 votingPeriodSeconds) AssetDAOCore(dloopToken_, votingPeriodSeconds) {}

    function _emitProposalCreated(uint256 proposalId, address, ProposalType, string calldata description)
        internal
        override
    {
        emit ProposalCreated(proposalId, msg.sender, description);
    }

    function _emitVoteCast(uint256 proposalId, bool support, uint256) internal override {
        emit VoteCast(proposalId, msg.sender, support);
    }
}

/// @notice Events of neither version, for the tests of a service that must not be blind without saying so.
contract AssetDAOUnknownEvents is AssetDAOCore {
    event ProposalSubmitted(uint256 indexed proposalId, address indexed proposer);
    event BallotCast(uint256 indexed proposalId, address indexed voter, bool support);

    constructor(address dloopToken_, uint256 votingPeriodSeconds) AssetDAOCore(dloopToken_, votingPeriodSeconds) {}

    function _emitProposalCreated(uint256 proposalId, address, ProposalType, string calldata) internal override {
        emit ProposalSubmitted(proposalId, msg.sender);
    }

    function _emitVoteCast(uint256 proposalId, bool support, uint256) internal override {
        emit BallotCast(proposalId, msg.sender, support);
    }
}
