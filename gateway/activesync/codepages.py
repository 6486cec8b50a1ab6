"""The ActiveSync WBXML code pages 0-25 (MS-ASWBXML 2.1.2.1): tag names and tokens, looked up both ways.

Each page is also an XML namespace. The namespace names are the page names
exactly as the EAS schemas (MS-ASCMD section 6) and the MS-ASWBXML examples
write them, without a trailing colon: "AirSync", "Email", "AirSyncBase", ...
(the older "AirSync:" spelling is accepted by ``gateway.activesync.wbxml.from_xml``).

The tables are written as one string per page: a word ``0xNN`` sets the token
of the name after it, and each further name takes the next token, so every gap
in a table shows as a new ``0xNN``. Rows marked "2.5 only" in the comments are
tags the specification lists for protocol version 2.5 alone; they are kept so
that a 2.5 client's requests still decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

__all__ = ["CodePage", "PAGES", "NAMESPACES", "TOKENS", "page_for_namespace", "tag_name", "tag_token"]

FIRST_TOKEN = 0x05  # 0x00-0x04 are WBXML's global tokens
LAST_TOKEN = 0x3F   # bit 0x40 flags content, bit 0x80 attributes

_TABLES: tuple[tuple[str, str], ...] = (
    ("AirSync", """
        0x05 Sync Responses Add Change Delete Fetch SyncKey ClientId ServerId Status Collection Class
        0x12 CollectionId GetChanges MoreAvailable WindowSize Commands Options FilterType
        0x19 Truncation
        0x1B Conflict Collections ApplicationData DeletesAsMoves
        0x20 Supported SoftDelete MIMESupport MIMETruncation Wait Limit Partial ConversationMode MaxItems
        0x29 HeartbeatInterval"""),  # Truncation: 2.5 only
    ("Contacts", """
        0x05 Anniversary AssistantName AssistantPhoneNumber Birthday
        0x09 Body BodySize BodyTruncated
        0x0C Business2PhoneNumber BusinessAddressCity BusinessAddressCountry BusinessAddressPostalCode
        0x10 BusinessAddressState BusinessAddressStreet BusinessFaxNumber BusinessPhoneNumber CarPhoneNumber
        0x15 Categories Category Children Child CompanyName Department Email1Address Email2Address
        0x1D Email3Address FileAs FirstName Home2PhoneNumber HomeAddressCity HomeAddressCountry
        0x23 HomeAddressPostalCode HomeAddressState HomeAddressStreet HomeFaxNumber HomePhoneNumber
        0x28 JobTitle LastName MiddleName MobilePhoneNumber OfficeLocation OtherAddressCity
        0x2E OtherAddressCountry OtherAddressPostalCode OtherAddressState OtherAddressStreet PagerNumber
        0x33 RadioPhoneNumber Spouse Suffix Title WebPage YomiCompanyName YomiFirstName YomiLastName
        0x3C Picture Alias WeightedRank"""),  # Body, BodySize, BodyTruncated: 2.5 only
    ("Email", """
        0x05 Attachment Attachments AttName AttSize AttOid AttMethod
        0x0C Body BodySize BodyTruncated DateReceived DisplayName DisplayTo Importance MessageClass
        0x14 Subject Read To Cc From ReplyTo AllDayEvent Categories Category DtStamp EndTime
        0x1F InstanceType BusyStatus Location MeetingRequest Organizer RecurrenceId Reminder
        0x26 ResponseRequested Recurrences Recurrence Type Until Occurrences Interval DayOfWeek
        0x2E DayOfMonth WeekOfMonth MonthOfYear StartTime Sensitivity TimeZone GlobalObjId ThreadTopic
        0x36 MIMEData MIMETruncated MIMESize
        0x39 InternetCPID Flag Status ContentClass FlagType CompleteTime DisallowNewTimeProposal"""),
    # Email 2.5 only: 0x05-0x0A, 0x0C-0x0E, DisplayName 0x10, 0x36-0x38 (the table spells AttOid "Att0Id").
    ("AirNotify", ""),  # "no longer in use": the page number is reserved, no tag is defined
    ("Calendar", """
        0x05 Timezone AllDayEvent Attendees Attendee Email Name Body BodyTruncated BusyStatus Categories
        0x0F Category
        0x11 DtStamp EndTime Exception Exceptions Deleted ExceptionStartTime Location MeetingStatus
        0x19 OrganizerEmail OrganizerName Recurrence Type Until Occurrences Interval DayOfWeek
        0x21 DayOfMonth WeekOfMonth MonthOfYear Reminder Sensitivity Subject StartTime UID
        0x29 AttendeeStatus AttendeeType
        0x33 DisallowNewTimeProposal ResponseRequested AppointmentReplyTime ResponseType CalendarType
        0x38 IsLeapMonth FirstDayOfWeek OnlineMeetingConfLink OnlineMeetingExternalLink ClientUid"""),
    # Calendar Body, BodyTruncated: 2.5 only; ClientUid: 16.0 and later.
    ("Move", "0x05 MoveItems Move SrcMsgId SrcFldId DstFldId Response Status DstMsgId"),
    ("GetItemEstimate", """
        0x05 GetItemEstimate Version Collections Collection Class CollectionId DateTime Estimate
        0x0D Response Status"""),  # Version, DateTime: early versions only
    ("FolderHierarchy", """
        0x05 Folders Folder DisplayName ServerId ParentId Type
        0x0C Status
        0x0E Changes Add Delete Update SyncKey FolderCreate FolderDelete FolderUpdate FolderSync Count"""),
    # FolderHierarchy Folders, Folder: 2.5-12.1 only.
    ("MeetingResponse", """
        0x05 CalendarId CollectionId MeetingResponse RequestId Request Result Status UserResponse
        0x0E InstanceId
        0x10 ProposedStartTime ProposedEndTime SendResponse"""),
    ("Tasks", """
        0x05 Body BodySize BodyTruncated Categories Category Complete DateCompleted DueDate
        0x0D UtcDueDate Importance Recurrence Type Start Until Occurrences Interval DayOfMonth
        0x16 DayOfWeek WeekOfMonth MonthOfYear Regenerate DeadOccur ReminderSet ReminderTime
        0x1D Sensitivity StartDate UtcStartDate Subject
        0x22 OrdinalDate SubOrdinalDate CalendarType IsLeapMonth FirstDayOfWeek"""),
    # Tasks Body, BodySize, BodyTruncated: 2.5 only.
    ("ResolveRecipients", """
        0x05 ResolveRecipients Response Status Type Recipient DisplayName EmailAddress Certificates
        0x0D Certificate MiniCertificate Options To CertificateRetrieval RecipientCount MaxCertificates
        0x14 MaxAmbiguousRecipients CertificateCount Availability StartTime EndTime MergedFreeBusy
        0x1A Picture MaxSize Data MaxPictures"""),
    ("ValidateCert", "0x05 ValidateCert Certificates Certificate CertificateChain CheckCRL Status"),
    ("Contacts2", """
        0x05 CustomerId GovernmentId IMAddress IMAddress2 IMAddress3 ManagerName CompanyMainPhone
        0x0C AccountName NickName MMS"""),
    ("Ping", """
        0x05 Ping
        0x07 Status HeartbeatInterval Folders Folder Id Class MaxFolders"""),
    ("Provision", """
        0x05 Provision Policies Policy PolicyType PolicyKey Data Status RemoteWipe EASProvisionDoc
        0x0E DevicePasswordEnabled AlphanumericDevicePasswordRequired RequireStorageCardEncryption
        0x11 PasswordRecoveryEnabled
        0x13 AttachmentsEnabled MinDevicePasswordLength MaxInactivityTimeDeviceLock
        0x16 MaxDevicePasswordFailedAttempts MaxAttachmentSize AllowSimpleDevicePassword
        0x19 DevicePasswordExpiration DevicePasswordHistory AllowStorageCard AllowCamera
        0x1D RequireDeviceEncryption AllowUnsignedApplications AllowUnsignedInstallationPackages
        0x20 MinDevicePasswordComplexCharacters AllowWiFi AllowTextMessaging AllowPOPIMAPEmail
        0x24 AllowBluetooth AllowIrDA RequireManualSyncWhenRoaming AllowDesktopSync MaxCalendarAgeFilter
        0x29 AllowHTMLEmail MaxEmailAgeFilter MaxEmailBodyTruncationSize MaxEmailHTMLBodyTruncationSize
        0x2D RequireSignedSMIMEMessages RequireEncryptedSMIMEMessages RequireSignedSMIMEAlgorithm
        0x30 RequireEncryptionSMIMEAlgorithm AllowSMIMEEncryptionAlgorithmNegotiation AllowSMIMESoftCerts
        0x33 AllowBrowser AllowConsumerEmail AllowRemoteDesktop AllowInternetSharing
        0x37 UnapprovedInROMApplicationList ApplicationName ApprovedApplicationList Hash
        0x3B AccountOnlyRemoteWipe"""),
    ("Search", """
        0x05 Search
        0x07 Store Name Query Options Range Status Response Result Properties Total EqualTo Value
        0x13 And Or FreeText
        0x17 DeepTraversal LongId RebuildResults LessThan GreaterThan
        0x1E UserName Password ConversationId Picture MaxSize MaxPictures"""),
    ("GAL", """
        0x05 DisplayName Phone Office Title Company Alias FirstName LastName HomePhone MobilePhone
        0x0F EmailAddress Picture Status Data"""),
    ("AirSyncBase", """
        0x05 BodyPreference Type TruncationSize AllOrNone
        0x0A Body Data EstimatedDataSize Truncated Attachments Attachment DisplayName FileReference
        0x12 Method ContentId ContentLocation IsInline NativeBodyType ContentType Preview
        0x19 BodyPartPreference BodyPart Status Add Delete ClientId Content
        0x20 Location Annotation Street City State Country PostalCode Latitude Longitude Accuracy
        0x2A Altitude AltitudeAccuracy LocationUri InstanceId"""),  # 0x1C-0x2D: 16.0 and later
    ("Settings", """
        0x05 Settings Status Get Set Oof OofState StartTime EndTime OofMessage AppliesToInternal
        0x0F AppliesToExternalKnown AppliesToExternalUnknown Enabled ReplyMessage BodyType
        0x14 DevicePassword Password DeviceInformation Model IMEI FriendlyName OS OSLanguage
        0x1C PhoneNumber UserInformation EmailAddresses SMTPAddress UserAgent EnableOutboundSMS
        0x22 MobileOperator PrimarySmtpAddress Accounts Account AccountId AccountName UserDisplayName
        0x29 SendDisabled
        0x2B RightsManagementInformation"""),
    ("DocumentLibrary", """
        0x05 LinkId DisplayName IsFolder CreationDate LastModifiedDate IsHidden ContentLength
        0x0C ContentType"""),
    ("ItemOperations", """
        0x05 ItemOperations Fetch Store Options Range Total Properties Data Status Response Version
        0x10 Schema Part EmptyFolderContents DeleteSubFolders UserName Password Move DstFldId
        0x18 ConversationId MoveAlways"""),
    ("ComposeMail", """
        0x05 SendMail SmartForward SmartReply SaveInSentItems ReplaceMime
        0x0B Source FolderId ItemId LongId InstanceId Mime ClientId Status AccountId
        0x15 Forwardees Forwardee Name Email"""),
    ("Email2", """
        0x05 UmCallerID UmUserNotes UmAttDuration UmAttOrder ConversationId ConversationIndex
        0x0B LastVerbExecuted LastVerbExecutionTime ReceivedAsBcc Sender CalendarType IsLeapMonth
        0x11 AccountId FirstDayOfWeek MeetingMessageType
        0x15 IsDraft Bcc Send"""),
    ("Notes", "0x05 Subject MessageClass LastModifiedDate Categories Category"),
    ("RightsManagement", """
        0x05 RightsManagementSupport RightsManagementTemplates RightsManagementTemplate
        0x08 RightsManagementLicense EditAllowed ReplyAllowed ReplyAllAllowed ForwardAllowed
        0x0D ModifyRecipientsAllowed ExtractAllowed PrintAllowed ExportAllowed ProgrammaticAccessAllowed
        0x12 Owner ContentExpiryDate TemplateID TemplateName TemplateDescription ContentOwner
        0x18 RemoveRightsManagementProtection"""),
    ("Find", """
        0x05 Find SearchId ExecuteSearch MailBoxSearchCriterion Query Status FreeText Options Range
        0x0E DeepTraversal
        0x11 Response Result Properties Preview HasAttachments Total DisplayCc DisplayBcc
        0x19 GalSearchCriterion
        0x20 MaxPictures MaxSize Picture"""),  # 16.1 only
)


@dataclass(frozen=True)
class CodePage:
    """One WBXML code page: its number, XML namespace, XML prefix and tags.

    ``names`` has 64 slots indexed by token (``None`` where no tag is
    defined), so a decoder finds a name with one index operation.
    """

    number: int
    namespace: str
    prefix: str
    names: tuple[str | None, ...]
    tokens: Mapping[str, int]


def _parse(number: int, namespace: str, table: str) -> CodePage:
    """A CodePage from one of the table strings above; a malformed table fails at import."""
    names: list[str | None] = [None] * (LAST_TOKEN + 1)
    tokens: dict[str, int] = {}
    token = None
    for word in table.split():
        if word.startswith("0x"):
            new = int(word, 16)
            if token is not None and new < token:
                raise ValueError(f"code page {number}: token {word} goes backwards")
            token = new
            continue
        if token is None or not FIRST_TOKEN <= token <= LAST_TOKEN:
            raise ValueError(f"code page {number}: {word} has no token in 0x05..0x3F")
        if names[token] is not None or word in tokens:
            raise ValueError(f"code page {number}: {word} or token {token:#04x} given twice")
        names[token] = word
        tokens[word] = token
        token += 1
    return CodePage(number, namespace, namespace.lower(), tuple(names), MappingProxyType(tokens))


PAGES: tuple[CodePage, ...] = tuple(_parse(number, ns, table) for number, (ns, table) in enumerate(_TABLES))
NAMESPACES: frozenset[str] = frozenset(page.namespace for page in PAGES)
_BY_NAMESPACE: dict[str, CodePage] = {page.namespace: page for page in PAGES}

# (namespace, name) -> (page, token): the encoder's one lookup per element.
TOKENS: Mapping[tuple[str, str], tuple[int, int]] = MappingProxyType({
    (page.namespace, name): (page.number, token) for page in PAGES for name, token in page.tokens.items()
})


def page_for_namespace(namespace: str) -> CodePage | None:
    """The code page whose XML namespace is ``namespace``, or None."""
    return _BY_NAMESPACE.get(namespace)


def tag_name(page: int, token: int) -> str | None:
    """The tag name of ``token`` (content and attribute bits ignored) on ``page``, or None."""
    if not 0 <= page < len(PAGES):
        return None
    return PAGES[page].names[token & LAST_TOKEN]


def tag_token(namespace: str, name: str) -> tuple[int, int] | None:
    """(page, token) of the tag ``name`` in ``namespace``, or None."""
    return TOKENS.get((namespace, name))
